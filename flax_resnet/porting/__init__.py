"""Weights between the frameworks and the files people have them in.

    state_dict.py   name rules plus layout transposes: a Flax model <-> a torch-layout state_dict
    torch_files.py  PyTorch files of any name (recognised by content), read safely, written atomically
    hub.py          transformers' and timm's config.json, read and written as JSON
    sources.py      any path people have (file, hub directory, Flax checkpoint, run) -> weights
    named.py        pretrained names (`flax_resnet.core.pretrained`) wherever sources take a path
    checkpoint.py   Flax checkpoints that know their variant (`flax_resnet.save` / `load`)
    inference.py    which variant a state_dict is, from its key names and shapes
    verify.py       both frameworks run on one batch, compared stage by stage
    port.py         the whole sequence `scripts/port_weights.py` runs
    fine_tune.py    the weights a fine-tuning run starts from

Only `state_dict` is imported here; the others (torch among their imports) load when named.
"""

from flax_resnet.porting.state_dict import (
                                            StateDictMismatchError,
                                            load_torch_state_dict,
                                            state_to_torch,
                                            to_torch_state_dict,
)

__all__ = ["StateDictMismatchError", "load_torch_state_dict", "state_to_torch", "to_torch_state_dict"]
