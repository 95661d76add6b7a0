"""Each parameter's weight decay, decided by its torch state_dict name, as torchvision decides it.

torchvision's reference trainer (references/classification/utils.py, `set_weight_decay`, called by
train.py with --norm-weight-decay and --bias-weight-decay; its V2 ResNet recipe sets the first to
0.0) puts every trainable parameter in exactly one group:

- the group of the first custom key that matches it. A key with a dot matches the full name
  ('fc.bias'); a key without one matches the parameter's own name, the part after the last dot
  ('bias' matches every '*.bias', BatchNorm's too). Only exact matches count.
- else the 'norm' group, if a norm_weight_decay is given and the parameter belongs to a
  normalization layer;
- else the 'other' group, with the optimizer's weight_decay.

The groups come in the order other, norm, then the custom keys, each holding its names in the
order given; empty groups are left out. The rule needs only names, so both frameworks share it:
torch_ref makes param groups of it, the Flax optimizer a decay per parameter leaf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence

from flax_resnet.core.files import InputError

OTHER = "other"
NORM = "norm"


class WeightDecayError(InputError):
    """Weight-decay settings that torchvision's rule cannot follow."""


@dataclasses.dataclass(frozen=True)
class DecayGroup:
    """Parameters that share one weight decay: torchvision's param group."""

    label: str  # 'other', 'norm' or the custom key
    weight_decay: float
    names: tuple[str, ...]


def decay_groups(names: Iterable[str], norm_names: Collection[str], weight_decay: float,
                 norm_weight_decay: float | None = None,
                 custom_keys_weight_decay: Sequence[tuple[str, float]] | None = None) -> list[DecayGroup]:
    """torchvision's param groups, by name.

    names: the trainable parameters' torch state_dict keys ('layer1.0.bn1.weight').
    norm_names: those of them that belong to normalization layers.
    norm_weight_decay: None puts the norm layers' parameters with the others.
    custom_keys_weight_decay: (key, decay) pairs, e.g. [('bias', 0.0)] for --bias-weight-decay 0.
    """
    names = list(names)
    custom = list(custom_keys_weight_decay or ())
    keys = [key for key, _ in custom]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise WeightDecayError(f"custom weight-decay keys given twice: {', '.join(duplicated)}; give each key once")
    strangers = sorted(set(norm_names) - set(names))
    if strangers:
        raise WeightDecayError(f"norm parameters that are not among the parameters: {', '.join(strangers)}")
    members: dict[str, list[str]] = {OTHER: [], NORM: [], **{key: [] for key in keys}}
    for name in names:
        members[_label(name, norm_names, norm_weight_decay is not None, keys)].append(name)
    decays = {OTHER: weight_decay, NORM: norm_weight_decay, **dict(custom)}
    labels = [OTHER, NORM, *keys]
    return [DecayGroup(label, float(decays[label]), tuple(members[label])) for label in labels if members[label]]


def weight_decays(names: Iterable[str], norm_names: Collection[str], weight_decay: float,
                  norm_weight_decay: float | None = None,
                  custom_keys_weight_decay: Sequence[tuple[str, float]] | None = None) -> dict[str, float]:
    """{name: its weight decay}, from the groups of `decay_groups` (same arguments)."""
    groups = decay_groups(names, norm_names, weight_decay, norm_weight_decay, custom_keys_weight_decay)
    return {name: group.weight_decay for group in groups for name in group.names}


def _label(name: str, norm_names: Collection[str], norm_group: bool, keys: list[str]) -> str:
    own_name = name.rsplit(".", 1)[-1]
    for key in keys:
        if key == (name if "." in key else own_name):
            return key
    if norm_group and name in norm_names:
        return NORM
    return OTHER


def uses_groups(config) -> bool:
    """Whether a TrainConfig's weight decay differs between parameters (torch's param groups)."""
    return config.norm_weight_decay is not None or config.bias_weight_decay is not None


def config_decay_settings(config) -> tuple[float, float | None, list[tuple[str, float]] | None]:
    """(weight_decay, norm_weight_decay, custom_keys_weight_decay) of a TrainConfig, as torchvision's
    train.py turns --weight-decay, --norm-weight-decay and --bias-weight-decay into them."""
    custom = None if config.bias_weight_decay is None else [("bias", config.bias_weight_decay)]
    return config.weight_decay, config.norm_weight_decay, custom

