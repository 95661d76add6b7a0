"""Port a ResNet's weights between a PyTorch-layout file and a Flax checkpoint, in any direction.

The sequence `scripts/port_weights.py` runs: read SRC, decide the variant (from the flags, else
from the keys and shapes), build the model, optionally verify it against the torch twin, write DST.
Every expected failure is a PortError with a one-line message; DST is written only at the end.
"""

from __future__ import annotations

import os
import sys

from flax_resnet.files import summarize
from flax_resnet.porting import checkpoint
from flax_resnet.porting.checkpoint import CheckpointError, full_kwargs, model_recipe, model_skeleton
from flax_resnet.porting.inference import AmbiguousVariantError, Variant, VariantError, infer_variant
from flax_resnet.porting.state_dict import StateDictMismatchError, load_torch_state_dict, to_torch_state_dict
from flax_resnet.porting.torch_files import (WeightFileError, is_torch_file, read_torch_file, require_finite,
                                             write_torch_file)
from flax_resnet.porting.verify import VerificationError, verify_port
from flax_resnet.registry import TORCHVISION_MODELS

VERIFY_FAILED = 3


class PortError(Exception):
    """An expected failure: printed as one line, no traceback."""


def port(args) -> int:
    """Port `args.src` to `args.dst` as `scripts/port_weights.py` does, printing what it does.

    `args` has the script's options as attributes (src, dst, model, num_classes, in_channels,
    stem, maxpool, shortcut, verify, tolerance, force). Returns 0, or VERIFY_FAILED when --verify
    found a divergence (DST not written). Raises PortError for any bad input, DST untouched.
    """
    check_destination(args.dst, args.force)
    source_state = None
    if is_torch_file(args.src):
        source_state = guarded(read_torch_file, args.src)
        print(f"read {args.src}: {len(source_state)} tensors")
        variant, hint = choose_variant(source_state, args)
        how = "as asked" if args.model else "inferred from the keys and shapes"
        print(f"{args.src}: {how}: {variant.describe()}")
        model = ported_model(source_state, variant, args.src, hint)
    else:
        model = guarded(checkpoint.load, args.src)
        variant = Variant(*model_recipe(model))
        check_flags_agree(variant, args)
        guarded(require_finite, to_torch_state_dict(model), args.src)
        print(f"read {args.src}: Flax checkpoint of {variant.describe()}")
    output = to_torch_state_dict(model) if is_torch_file(args.dst) else None
    if args.verify:
        # The torch twin is built by torch itself from DST's weights, else SRC's.
        reference = output if output is not None else source_state
        if reference is None:  # Flax to Flax: neither end is a torch-layout file
            reference = to_torch_state_dict(model)
        report = guarded(verify_port, model, reference, variant.name, variant.kwargs,
                         tolerance=args.tolerance)
        print("\n".join(report.lines()))
        if not report.passed:
            bad = report.first_divergence
            print(f"error: {args.dst} not written: the port of {args.src} diverges first at "
                  f"{bad.stage} ({bad.relative:.1e} > {args.tolerance:.0e})", file=sys.stderr)
            return VERIFY_FAILED
    if output is not None:
        guarded(write_torch_file, output, args.dst)
        same_as = " (the same as torchvision's)" if variant.name in TORCHVISION_MODELS else ""
        print(f"wrote {args.dst}: {len(output)} tensors, keyed as torch_ref's {variant.name}{same_as}")
    else:
        guarded(checkpoint.save, model, args.dst, model_name=variant.name,
                model_kwargs=variant.kwargs, overwrite=args.force)
        print(f"wrote {args.dst}: Flax checkpoint of {variant.name}")
    return 0


def guarded(function, *args, **kwargs):
    """Call `function`; its expected failures become a PortError (their messages name the file)."""
    try:
        return function(*args, **kwargs)
    except (WeightFileError, CheckpointError, VerificationError) as error:
        raise PortError(str(error)) from None


def check_destination(dst: str, force: bool) -> None:
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise PortError(f"{dst}: folder {folder} does not exist")
    if not os.path.lexists(dst):
        return
    if not force:
        raise PortError(f"{dst} already exists; pass --force to replace it")
    if is_torch_file(dst) and not os.path.isfile(dst):
        raise PortError(f"{dst} exists and is not a file; not replacing it")
    if not is_torch_file(dst) and not checkpoint.is_checkpoint(dst):
        raise PortError(f"{dst} exists and is not a flax_resnet checkpoint; not replacing it")


def given_options(args) -> dict:
    options = {"stem": args.stem, "maxpool": args.maxpool, "shortcut": args.shortcut}
    return {key: value for key, value in options.items() if value is not None}


def choose_variant(state_dict, args) -> tuple[Variant, str | None]:
    """The variant to build, and what the weights look like when that differs from --model."""
    options = given_options(args)
    try:
        return infer_variant(state_dict, name=args.model, num_classes=args.num_classes,
                             in_channels=args.in_channels, **options), None
    except AmbiguousVariantError as error:
        raise PortError(f"{args.src}: {error}") from None
    except VariantError as error:
        if args.model is None:
            raise PortError(f"{args.src}: {error}") from None
        hint = str(error)
    except ValueError as error:  # a flag the registry refuses, e.g. --num-classes 0
        raise PortError(str(error)) from None
    # Build what was asked for; loading the weights into it then says exactly what does not fit.
    asked = {"num_classes": args.num_classes, "in_channels": args.in_channels, **options}
    try:
        kwargs = full_kwargs(args.model, {k: v for k, v in asked.items() if v is not None})
    except ValueError as error:
        raise PortError(str(error)) from None
    return Variant(args.model, kwargs), hint


def ported_model(state_dict, variant: Variant, src: str, hint: str | None):
    model = model_skeleton(variant.name, **variant.kwargs)
    try:
        load_torch_state_dict(model, state_dict)
    except StateDictMismatchError as error:
        problems = []
        if error.missing:
            problems.append(f"{len(error.missing)} missing key(s): {summarize(error.missing)}")
        if error.unexpected:
            problems.append(f"{len(error.unexpected)} unexpected key(s): {summarize(error.unexpected)}")
        for key, got, want in error.mismatched[:3]:
            problems.append(f"{key} has shape {got} in the file, {want} in the model")
        if len(error.mismatched) > 3:
            problems.append(f"and {len(error.mismatched) - 3} more shape mismatches")
        advice = f" ({hint})" if hint else ""
        raise PortError(f"{src} does not fit {variant.name}: {'; '.join(problems)}{advice}") from None
    return model


def check_flags_agree(variant: Variant, args) -> None:
    """A Flax checkpoint says what it is; flags may repeat that but not contradict it."""
    given = {"model": args.model, "num_classes": args.num_classes,
             "in_channels": args.in_channels, **given_options(args)}
    saved = {"model": variant.name, **variant.kwargs}
    clashes = [f"{key}={value!r} (saved: {saved.get(key)!r})" for key, value in given.items()
               if value is not None and saved.get(key) != value]
    if clashes:
        raise PortError(f"{args.src} is a Flax checkpoint of {variant.describe()}; the flags "
                        f"contradict it: {', '.join(clashes)}")
