"""Port a ResNet's weights between the files people have and Flax checkpoints, in any direction.

The sequence `scripts/port_weights.py` runs: read SRC (`sources.read_source`: a PyTorch file, a
transformers or timm directory, a Flax checkpoint, a run folder), decide the variant (from the
flags, else from what SRC says and its keys and shapes), build the model, optionally verify it
against the torch twin, write DST in the spelling asked for. Every expected failure is an InputError
with a one-line message; DST is written only at the end.
"""

from __future__ import annotations

import os
import sys

import torch

from flax_resnet.core.files import InputError
from flax_resnet.core.layouts import describe_spelling, from_twin
from flax_resnet.core.registry import TORCHVISION_MODELS
from flax_resnet.porting import checkpoint, hub
from flax_resnet.porting.hub import HubConfigError
from flax_resnet.porting.inference import Variant
from flax_resnet.porting.sources import KINDS, Source, build_model, read_source, resolve_variant
from flax_resnet.porting.state_dict import to_torch_state_dict
from flax_resnet.porting.torch_files import TORCH_SUFFIXES, write_torch_file
from flax_resnet.porting.verify import verify_port

VERIFY_FAILED = 3
# --layout: how a PyTorch DST spells its keys.
LAYOUT_CHOICES = ("torchvision", "source", "transformers")


class PortError(InputError):
    """An expected failure: printed as one line, no traceback."""


def port(args) -> int:
    """Port `args.src` to `args.dst` as `scripts/port_weights.py` does, printing what it does.

    `args` has the script's options as attributes (src, dst, model, num_classes, in_channels,
    stem, maxpool, shortcut, key, layout, verify, tolerance, force). Returns 0, or VERIFY_FAILED
    when --verify found a divergence (DST not written). Raises InputError for any bad input, DST
    untouched.
    """
    source = read_source(args.src, key=args.key)
    spelling = output_spelling(args.layout, source)
    target = destination_kind(args.dst, spelling, args.layout)
    check_destination(args.dst, args.force, target)
    variant, hint = resolve_variant(source, name=args.model, num_classes=args.num_classes,
                            in_channels=args.in_channels, **given_options(args))
    report_source(source, variant, args)
    model = build_model(source, variant, hint=hint)
    output = to_torch_state_dict(model) if target != "flax" else None
    if args.verify:
        # The torch twin is built by torch itself from DST's weights, else SRC's.
        reference = output if output is not None else (
            to_torch_state_dict(model) if source.headless else source.state_dict)
        report = verify_port(model, reference, variant.name, variant.kwargs, tolerance=args.tolerance)
        print("\n".join(report.lines()))
        if not report.passed:
            bad = report.first_divergence
            print(f"error: {args.dst} not written: the port of {args.src} diverges first at "
                  f"{bad.stage} ({bad.relative:.1e} > {args.tolerance:.0e})", file=sys.stderr)
            return VERIFY_FAILED
    if target == "torch":
        write_torch_file(from_twin(output, spelling), args.dst)
        print(f"wrote {args.dst}: {len(output)} tensors, {keyed_as(spelling, variant, output)}")
    elif target == "transformers":
        try:
            config = hub.transformers_config(variant.name, variant.kwargs, labels=source.labels,
                                             base=source.hub_config)
            hub.write_transformers_directory(args.dst, output, config)
        except HubConfigError as error:
            raise PortError(f"{args.dst} not written: {error}") from None
        print(f"wrote {args.dst}: transformers directory of ResNetForImageClassification "
              f"(config.json and model.safetensors, {len(output)} tensors)")
    else:
        checkpoint.save(model, args.dst, model_name=variant.name, model_kwargs=variant.kwargs,
                overwrite=args.force, source=source.record())
        print(f"wrote {args.dst}: Flax checkpoint of {variant.name}")
    return 0



def report_source(source: Source, variant: Variant, args) -> None:
    """What was read and what it was taken to be, one fact a line."""
    if source.kind in ("flax", "run"):
        origin = f"; ported from the {source.origin}" if source.origin else ""
        print(f"read {args.src}: {KINDS[source.kind]} of {variant.describe()}{origin}")
        return
    print(f"read {args.src}: {len(source.state_dict)} tensors, {source.describe()}")
    if args.model:
        how = "as asked"
    elif source.kind == "timm":
        how = "timm's config.json names it"
    else:
        how = "inferred from the keys and shapes"
    print(f"{args.src}: {how}: {variant.describe()}")
    if source.facts is not None:
        facts = source.facts
        print(f"{args.src}: config.json agrees: layer_type {facts['block']}, depths {list(facts['layers'])}, "
              f"v1.5 (stride on the 3x3), {facts['num_classes'] or 'no'} labels")
    if source.preprocessing is not None:
        print(f"{args.src}: expects {source.preprocessing.describe()}")
    if source.headless:
        if args.num_classes is None:
            raise PortError(f"{args.src} has no classifier ({source.describe()}); pass --num-classes N "
                            f"to add a newly initialized one")
        print(f"{args.src} has no classifier: {variant.name}'s is newly initialized for "
              f"{variant.kwargs['num_classes']} classes, as training would start it")


def output_spelling(layout: str | None, source: Source) -> tuple[str, ...]:
    if layout in (None, "torchvision"):
        return ()
    if layout == "transformers":
        return ("transformers",)
    spelling = tuple(name for name in source.spelling if name != "transformers_backbone")
    if source.spelling[-1:] == ("transformers_backbone",):
        spelling += ("transformers",)  # the classifier needs names too: ResNetForImageClassification's
    return spelling


def destination_kind(dst: str, spelling: tuple[str, ...], layout: str | None) -> str:
    """'torch' (a file), 'transformers' (a save_pretrained directory) or 'flax' (a checkpoint)."""
    if dst.lower().endswith(TORCH_SUFFIXES):
        return "torch"
    if spelling[-1:] == ("transformers",):
        if "data_parallel" in spelling:
            raise PortError(f"{dst}: a transformers directory has no `module.` prefixes; write a "
                            f"PyTorch file ({', '.join(TORCH_SUFFIXES)}) to keep them")
        return "transformers"
    if layout is not None:
        raise PortError(f"{dst}: --layout {layout} spells the keys of a PyTorch file "
                        f"({', '.join(TORCH_SUFFIXES)}) or a transformers directory; a Flax "
                        f"checkpoint has its own names")
    return "flax"


def check_destination(dst: str, force: bool, target: str) -> None:
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise PortError(f"{dst}: folder {folder} does not exist")
    if not os.path.lexists(dst):
        return
    if not force:
        raise PortError(f"{dst} already exists; pass --force to replace it")
    if target == "torch" and not os.path.isfile(dst):
        raise PortError(f"{dst} exists and is not a file; not replacing it")
    if target == "flax" and not checkpoint.is_checkpoint(dst):
        raise PortError(f"{dst} exists and is not a flax_resnet checkpoint; not replacing it")
    if target == "transformers" and not hub.is_transformers_directory(dst):
        raise PortError(f"{dst} exists and is not a transformers ResNet directory; not replacing it")


def given_options(args) -> dict:
    options = {"stem": args.stem, "maxpool": args.maxpool, "shortcut": args.shortcut}
    return {key: value for key, value in options.items() if value is not None}


def keyed_as(spelling: tuple[str, ...], variant: Variant, state_dict) -> str:
    """How a written file is keyed, and whether torchvision's own model is the same network."""
    if spelling:
        return f"keyed as {describe_spelling(spelling)}"
    text = f"keyed as torch_ref's {variant.name}"
    verdict = torchvision_verdict(variant, {k: tuple(v.shape) for k, v in state_dict.items()})
    return text + (f" ({verdict})" if verdict else "")


def torchvision_verdict(variant: Variant, shapes: dict) -> str | None:
    """'the same as torchvision's' only if torchvision's model of that name loads these keys and
    shapes strictly and computes the same network; otherwise what differs; None if it has none."""
    if variant.name not in TORCHVISION_MODELS:
        return None
    import torchvision

    builder = getattr(torchvision.models, variant.name, None)
    if builder is None:
        return None
    with torch.device("meta"):  # shapes only
        reference = builder(num_classes=variant.kwargs["num_classes"])
    theirs = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    call = f"torchvision.models.{variant.name}(num_classes={variant.kwargs['num_classes']})"
    differing = [key for key in theirs if key in shapes and shapes[key] != theirs[key]]
    if differing:
        key = differing[0]
        return f"{call} would reject it: {key} is {shapes[key]}, torchvision's {theirs[key]}"
    if set(theirs) != set(shapes):
        return f"{call} would reject it: the keys differ"
    if not variant.kwargs.get("maxpool", True):
        return f"{call} loads it, but has the max-pool after the stem that this model lacks"
    return "the same as torchvision's"
