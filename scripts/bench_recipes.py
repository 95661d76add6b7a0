"""What today's recipe pieces cost per train step on this machine: mixing, random erasing, drop path, EMA.

    python scripts/bench_recipes.py --model resnet20 --batch-size 128 --image-size 32

Prints a Markdown table, then one JSON object as the last line. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.config import OneLineErrorParser  # noqa: E402
from flax_resnet.core.registry import MODELS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineErrorParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=list(MODELS), metavar="NAME",
                        help="a residual registry variant (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each piece takes (default %(default)s)")
    parser.add_argument("--drop-path-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    for name in ("batch_size", "image_size", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from flax_resnet.studies.recipe_costs import format_costs, measure_recipe_costs

    result = measure_recipe_costs(args.model, args.batch_size, args.image_size, args.steps, args.rounds,
                                  drop_path_rate=args.drop_path_rate,
                                  progress=lambda message: print(message, file=sys.stderr))
    print(format_costs(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
