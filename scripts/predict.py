"""The top-5 classes of image files for pretrained weights by name, in Flax, torch or both side by side.

    python scripts/predict.py IMAGE... --weights NAME [--framework flax|torch|both] [--top K]

NAME: a pretrained name (`python scripts/port_weights.py --list-pretrained`), downloaded and
converted the first time. Each image gets the weights' own eval transform (resize, centre crop,
mean and std as published); both frameworks see the very same pixels. The last line is JSON.
Exit status: 0 done; 1 weights or an image that cannot be used (one message); 2 bad arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.config import OneLineErrorParser  # noqa: E402
from flax_resnet.core.files import InputError  # noqa: E402
from flax_resnet.core.pretrained.predict import predict, report_lines  # noqa: E402


def parse_args(argv):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (anything PIL reads)")
    parser.add_argument("--weights", required=True, metavar="NAME",
                        help="e.g. torchvision:resnet50.IMAGENET1K_V2 or hf-hub:timm/resnet50.a1_in1k")
    parser.add_argument("--framework", choices=("flax", "torch", "both"), default="both")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes per image (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be positive, got {args.top}")
    return parser, args


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    frameworks = ("flax", "torch") if args.framework == "both" else (args.framework,)
    try:
        report = predict(args.images, args.weights, frameworks, args.top)
    except InputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(report)))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
