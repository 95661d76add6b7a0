"""Compare the Flax and PyTorch twins' training and inference speed in one process run.

    python scripts/bench.py --model resnet18 --stem cifar --batch-size 128 --image-size 32

Prints a table, then one JSON object as the last line. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from tqdm import tqdm  # noqa: E402

from flax_resnet.core.config import DEVICES, add_model_options, model_options  # noqa: E402
from flax_resnet.core.registry import MODELS  # noqa: E402
from flax_resnet.core.timing import PRECISIONS, BenchConfig, format_table  # noqa: E402


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=list(MODELS), metavar="NAME",
                        help="a registry variant (default resnet18)")
    add_model_options(parser, names=("stem", "maxpool", "shortcut"))
    parser.add_argument("--batch-size", type=_positive, default=128)
    parser.add_argument("--image-size", type=_positive, default=32)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--steps", type=_positive, default=10, help="timed steps per contestant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--train-only", action="store_true", help="skip inference")
    parser.add_argument("--eval-only", action="store_true", help="skip training")
    parser.add_argument("--untuned", action="store_true",
                        help="also time the Flax steps as plain lax code compiled with XLA's defaults")
    parser.add_argument("--no-loop", action="store_true",
                        help="skip timing scripts/train.py's training loop against its bare step")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (a GPU if the frameworks see one), cpu or gpu")
    parser.add_argument("--tf32", action="store_true",
                        help="TF32 for float32 matmuls and convolutions on NVIDIA GPUs, in both frameworks")
    parser.add_argument("--torch-channels-last", action="store_true",
                        help="add torch eager in channels_last, and run torch.compile channels_last")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    options = model_options(args)
    config = BenchConfig(
        model=args.model, options=options, batch_size=args.batch_size, image_size=args.image_size,
        precision=args.precision, steps=args.steps, warmup=max(args.warmup, 0),
        torch_compile=not args.no_torch_compile, train=not args.eval_only, eval=not args.train_only,
        untuned=args.untuned, device=args.device, tf32=args.tf32, torch_channels_last=args.torch_channels_last,
    )
    if args.train_only and args.eval_only:
        print("error: --train-only and --eval-only leave nothing to measure", file=sys.stderr)
        return 2
    # Both frameworks share one GPU here: JAX must not take 75 % of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # Imported after the arguments are checked: JAX and torch take seconds to load.
    from flax_resnet.core.timing import run_benchmark
    from flax_resnet.studies.benchmark import measure_loop_costs, measure_training_loop

    with tqdm(desc="bench", unit="stage", leave=False) as bar:
        def progress(message):
            bar.set_postfix_str(message)
            bar.update()

        try:
            result = run_benchmark(config, progress)
            if not args.no_loop:
                progress("timing the training loop of scripts/train.py")
                result.update(measure_training_loop())
                progress("timing the training loop around a step that does nothing")
                result.update(measure_loop_costs())
        except ValueError as error:  # an option a model does not take, a bad size, no GPU (ConfigError)
            bar.close()
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(format_table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
