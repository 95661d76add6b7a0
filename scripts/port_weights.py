"""Port ResNet weights between PyTorch-layout files and Flax checkpoints, in any direction.

    python scripts/port_weights.py SRC DST [--model NAME] [--num-classes N] [--in-channels C]
        [--stem {imagenet,cifar}] [--maxpool | --no-maxpool] [--shortcut {A,B}]
        [--verify] [--tolerance T] [--force]

A path ending in .pth, .pt or .safetensors is a PyTorch-layout file; any other path is a Flax
checkpoint directory. Without --model the variant is inferred from the file's keys and shapes.
Exit status: 0 done; 1 bad input (one message on stderr); 2 bad arguments; 3 --verify found a
divergence. DST is written only when everything succeeded, and replaced only with --force.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet import checkpoint  # noqa: E402
from flax_resnet.checkpoint import CheckpointError, full_kwargs, model_recipe, model_skeleton  # noqa: E402
from flax_resnet.inference import AmbiguousVariantError, Variant, VariantError, infer_variant  # noqa: E402
from flax_resnet.porting import (  # noqa: E402
    StateDictMismatchError, load_torch_state_dict, to_torch_state_dict,
)
from flax_resnet.registry import TORCHVISION_MODELS  # noqa: E402
from flax_resnet.torch_files import (  # noqa: E402
    WeightFileError, is_torch_file, read_torch_file, require_finite, summarize, write_torch_file,
)
from flax_resnet.verify import DEFAULT_TOLERANCE, VerificationError, verify_port  # noqa: E402

VERIFY_FAILED = 3


class PortError(Exception):
    """An expected failure: printed as one line, no traceback."""


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 done, 1 bad input, 2 bad arguments, 3 --verify found a divergence.")
    parser.add_argument("src", help="a .pth / .pt / .safetensors file or a Flax checkpoint directory")
    parser.add_argument("dst", help="where to write: a file name with one of those endings or a directory")
    parser.add_argument("--model", help="variant name (default: inferred from the weights)")
    parser.add_argument("--num-classes", type=int, help="default: from the classifier's shape")
    parser.add_argument("--in-channels", type=int, help="default: from the first conv's shape")
    parser.add_argument("--stem", choices=("imagenet", "cifar"), help="default: from conv1's size")
    parser.add_argument("--maxpool", action=argparse.BooleanOptionalAction,
                        help="max-pool after the stem (the weights cannot show it; default: the "
                             "variant's, on after the imagenet stem)")
    parser.add_argument("--shortcut", choices=("A", "B"), help="CIFAR nets' shortcut kind")
    parser.add_argument("--verify", action="store_true",
                        help="run both frameworks on a random batch; fail above --tolerance")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest per-stage max |flax - torch| / max |torch| (default: %(default)g)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return port(args)
    except PortError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def port(args) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
