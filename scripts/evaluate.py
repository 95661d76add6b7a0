"""Evaluate any weights on a dataset: top-1, top-5 and the loss, in Flax, torch or both.

    python scripts/evaluate.py --weights PATH --dataset NAME [--data-dir DIR] [--framework flax|torch|both]

PATH: a Flax checkpoint, a PyTorch file, a transformers or timm directory, a run folder, or a
pretrained name (`scripts/port_weights.py --list-pretrained`), whose published scores are printed
beside the measured ones. The eval transform follows what the weights recorded (the catalog's,
timm's pretrained_cfg, a run's config.json), else the data; flags override it. `--framework
both` runs the PyTorch twin on the same pixels and reports the top-1 agreement between the
frameworks. The last line of the output is JSON.
Exit status: 0 done; 1 weights or data that cannot be evaluated (one message); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.config import OneLineErrorParser, add_model_options, model_options  # noqa: E402
from flax_resnet.core.evaluation import EvalRequest, evaluate, report_lines  # noqa: E402
from flax_resnet.core.pretrained import published_lines  # noqa: E402


def parse_args(argv):
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, metavar="PATH",
                        help="a Flax checkpoint, a PyTorch file, a transformers / timm directory, a run folder "
                             "or a pretrained name")
    parser.add_argument("--dataset", required=True, metavar="NAME",
                        help="as scripts/train.py's: embedded_mnist, imagefolder (streamed, with --data-dir), "
                             "mnist, cifar10, a tfds name (imagenet2012 is streamed), ...")
    parser.add_argument("--data-dir", metavar="DIR", help="an ImageFolder tree (DIR/val/<class>/<image>), "
                                                          "torchvision-format folders or a tfds data_dir")
    parser.add_argument("--workers", type=int, metavar="N", help="streamed data: loader processes (default: one "
                                                                 "per core; 0: decode in this process)")
    parser.add_argument("--framework", choices=("flax", "torch", "both"), default="flax")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--image-size", type=int, metavar="SIZE", help="default: the weights' input size, else the data's")
    parser.add_argument("--mean", type=float, nargs="+", help="default: the weights' own, else the training set's")
    parser.add_argument("--std", type=float, nargs="+", help="as --mean")
    parser.add_argument("--crop-pct", type=float, help="resize to SIZE / crop-pct and cut out the centre "
                                                       "(default: the weights' own, else no crop)")
    parser.add_argument("--interpolation", choices=("bilinear", "bicubic"), help="default: the weights' own")
    parser.add_argument("--key", metavar="NAME", help="the entry of a saved dict holding the state_dict")
    parser.add_argument("--model", help="the variant, when the weights cannot tell (e.g. resnet20 vs plain20)")
    add_model_options(parser, names=("stem", "maxpool", "shortcut"), words=False)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    if (args.mean is None) != (args.std is None):
        parser.error("give --mean and --std together, or neither")
    return parser, args


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    options = model_options(args)
    request = EvalRequest(
        weights=args.weights, dataset=args.dataset, data_dir=args.data_dir,
        frameworks=("flax", "torch") if args.framework == "both" else (args.framework,),
        batch_size=args.batch_size, image_size=args.image_size,
        mean=None if args.mean is None else tuple(args.mean), std=None if args.std is None else tuple(args.std),
        crop_pct=args.crop_pct, interpolation=args.interpolation, key=args.key, model=args.model,
        model_options=options, progress=args.progress, workers=args.workers)
    from flax_resnet.core.files import InputError

    try:
        report = evaluate(request)
    except InputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print("\n".join(report_lines(report) + published_lines(args.weights)))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
