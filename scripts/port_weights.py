"""Port ResNet weights between the files people have and Flax checkpoints, in any direction.

    python scripts/port_weights.py --list-pretrained
    python scripts/port_weights.py SRC DST [--model NAME] [--num-classes N] [--in-channels C]
        [--stem {imagenet,cifar}] [--maxpool | --no-maxpool] [--shortcut {A,B}] [--key NAME]
        [--layout {torchvision,source,transformers}] [--verify] [--tolerance T] [--force]

SRC: a PyTorch file of any name (recognised by its content), a transformers or timm directory
(config.json beside model.safetensors or pytorch_model.bin), a Flax checkpoint directory, a
training run's folder, or a pretrained name (`--list-pretrained`; downloaded once). DST: a file
ending in .pth, .pt or .safetensors; with --layout transformers (or --layout source from a
transformers SRC) a directory that transformers' from_pretrained loads; any other path is a Flax
checkpoint directory. Without --model the variant is inferred from what SRC says and its keys and
shapes.
Exit status: 0 done; 1 bad input (one message on stderr); 2 bad arguments; 3 --verify found a
divergence. DST is written only when everything succeeded, and replaced only with --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.config import add_model_options  # noqa: E402
from flax_resnet.core.files import InputError  # noqa: E402
from flax_resnet.core.pretrained import listing_lines  # noqa: E402
from flax_resnet.porting.port import LAYOUT_CHOICES, port  # noqa: E402
from flax_resnet.porting.verify import DEFAULT_TOLERANCE  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 done, 1 bad input, 2 bad arguments, 3 --verify found a divergence.")
    parser.add_argument("src", nargs="?", help="a PyTorch file, a transformers / timm directory, a Flax "
                                               "checkpoint, a run folder or a pretrained name")
    parser.add_argument("dst", nargs="?", help="a .pth / .pt / .safetensors file name, or a directory")
    parser.add_argument("--list-pretrained", action="store_true", help="print the pretrained names and exit")
    parser.add_argument("--model", help="variant name (default: inferred from the weights)")
    parser.add_argument("--num-classes", type=int, help="default: from the classifier's shape")
    parser.add_argument("--in-channels", type=int, help="default: from the first conv's shape")
    add_model_options(parser, names=("stem", "maxpool", "shortcut"), words=False, help={
        "stem": "default: from conv1's size",
        "maxpool": "max-pool after the stem (the weights cannot show it; default: the variant's, on after the "
                   "imagenet stem)",
        "shortcut": "CIFAR nets' shortcut kind"})
    parser.add_argument("--key", metavar="NAME",
                        help="the entry of a saved dict that holds the state_dict (default: the dict "
                             "itself, or 'state_dict', 'model_state_dict', 'model', 'net')")
    parser.add_argument("--layout", choices=LAYOUT_CHOICES,
                        help="key names of a PyTorch DST: torchvision (default; torch_ref's), source "
                             "(SRC's own: module., shortcut, linear, transformers'), transformers")
    parser.add_argument("--verify", action="store_true",
                        help="run both frameworks on a random batch; fail above --tolerance")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest per-stage max |flax - torch| / max |torch| (default: %(default)g)")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    if not args.list_pretrained and (args.src is None or args.dst is None):
        parser.error("SRC and DST are required (or --list-pretrained)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.list_pretrained:
            print("\n".join(listing_lines()))
            return 0
        return port(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
