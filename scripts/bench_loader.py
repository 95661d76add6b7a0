"""Measure the data side: loader throughput against torchvision, memory of streamed training runs,
and the in-memory path against streaming on the same images.

    python scripts/bench_loader.py throughput --images 2000 --workers 2
    python scripts/bench_loader.py throughput --image-size 176 --auto-augment ta_wide --random-erase 0.1
    python scripts/bench_loader.py memory --sizes 5000 20000
    python scripts/bench_loader.py in-memory

Trees of generated JPEGs (ImageNet's sizes, about 500x375) are written under --root once and
reused. Prints a summary, then one JSON object as the last line. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from flax_resnet.core.data.policies import AUTO_AUGMENT_NAMES  # plain Python, no JAX


def probability(text: str) -> float:
    """An argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a probability in [0, 1] (0: off), got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/loader-bench", help="where trees and runs go (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="loader processes, both contestants")
    commands = parser.add_subparsers(dest="command", required=True)
    throughput = commands.add_parser("throughput", help="our loader against torchvision's, no model")
    throughput.add_argument("--images", type=int, default=2000, help="JPEGs in the generated tree")
    throughput.add_argument("--batch-size", type=int, default=64)
    throughput.add_argument("--image-size", type=int, default=224)
    throughput.add_argument("--batches", type=int, default=20, help="timed batches per round")
    throughput.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start)")
    throughput.add_argument("--rounds", type=int, default=2, help="turns each contestant takes")
    throughput.add_argument("--auto-augment", choices=AUTO_AUGMENT_NAMES, metavar="NAME",
                            help="torchvision's policy after the crop and flip: " + ", ".join(AUTO_AUGMENT_NAMES)
                                 + "; with it (or --random-erase), torchvision runs its reference's whole "
                                   "training preset and ours is also timed with its device step")
    throughput.add_argument("--random-erase", type=probability, default=0.0, metavar="P",
                            help="torchvision's RandomErasing probability (ours: on the device), 0: off")
    memory = commands.add_parser("memory", help="peak RSS of one streamed training epoch per tree size")
    memory.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="images per tree")
    memory.add_argument("--model", default="mnist_resnet", help="the model trained (default %(default)s)")
    memory.add_argument("--image-size", type=int, default=28, help="crop size (default %(default)s)")
    memory.add_argument("--batch-size", type=int, default=256)
    memory.add_argument("--rounds", type=int, default=2, help="turns each tree size takes")
    in_memory = commands.add_parser("in-memory", help="embedded digits: in memory vs streamed from PNGs")
    in_memory.add_argument("--epochs", type=int, default=4)
    in_memory.add_argument("--rounds", type=int, default=2, help="turns each way of reading takes")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from flax_resnet.studies import data_loading as bench

    root = Path(args.root)
    if args.command == "throughput":
        tree = bench.write_jpeg_tree(root / f"jpeg-{args.images}", args.images)
        config = bench.LoaderBench(str(tree), workers=args.workers, batch_size=args.batch_size,
                                   image_size=args.image_size, batches=args.batches, warmup=args.warmup,
                                   rounds=args.rounds, auto_augment=args.auto_augment,
                                   random_erase=args.random_erase)
        result = bench.loader_benchmark(config, progress=lambda message: print(message, flush=True))
        if config.whole_preset:
            print(f"ours with the device step {result['ours_device_step_img_per_s']:.0f} img/s, torchvision "
                  f"{result['torchvision_img_per_s']:.0f} img/s: {result['device_step_ratio']:.2f}x; the device step "
                  f"{result['ours_device_step_device_step_ms_per_img']:.2f} ms per image, this process's CPU "
                  f"{result['ours_device_step_main_cpu_ms_per_img']:.2f} ms per image, workers' "
                  f"{result['ours_device_step_worker_cpu_ms_per_img']:.2f} ms")
        print(f"ours {result['ours_img_per_s']:.0f} img/s ({result['ours_img_per_s_per_worker']:.0f} per worker), "
              f"torchvision {result['torchvision_img_per_s']:.0f} img/s "
              f"({result['torchvision_img_per_s_per_worker']:.0f} per worker): {result['ratio']:.2f}x; "
              f"first batch {result['ours_first_batch_s']:.1f} s vs {result['torchvision_first_batch_s']:.1f} s")
        print(f"worker CPU per image: ours {result['ours_worker_cpu_ms_per_img']:.2f} ms, torchvision "
              f"{result['torchvision_worker_cpu_ms_per_img']:.2f} ms ({result['cpu_ratio']:.2f}x); the consuming "
              f"process: {result['ours_main_cpu_ms_per_img']:.2f} ms vs {result['torchvision_main_cpu_ms_per_img']:.2f} ms")
        print(f"peak RSS (PSS) with workers: ours {result['ours_peak_rss_mb']:.0f} ({result['ours_peak_pss_mb']:.0f}) MB, "
              f"torchvision {result['torchvision_peak_rss_mb']:.0f} ({result['torchvision_peak_pss_mb']:.0f}) MB")
    elif args.command == "memory":
        trees = {n: bench.write_jpeg_tree(root / f"jpeg-{n}-val", n, held_out=0.1) for n in sorted(set(args.sizes))}
        result = bench.memory_benchmark(trees, root / "runs", workers=args.workers, model=args.model,
                                        image_size=args.image_size, batch_size=args.batch_size, rounds=args.rounds)
        for run in result["runs"]:
            print(f"{run['images']} images: peak RSS {run['peak_rss_mb']:.0f} MB, PSS {run['peak_pss_mb']:.0f} MB over "
                  f"{run['processes']} processes (training process {run['peak_main_rss_mb']:.0f} MB, largest "
                  f"worker {run['peak_worker_rss_mb']:.0f} MB), {run['seconds']:.0f} s")
    else:
        tree = bench.write_embedded_digits_tree(root / "embedded-digits")
        result = bench.in_memory_vs_streamed(tree, root / "runs-in-memory", epochs=args.epochs, rounds=args.rounds)
        for run in result["runs"]:
            rates = ", ".join(f"{r['images_per_sec']:.0f}" for r in run["history"])
            print(f"{run['name']}: img/s per epoch {rates}; peak RSS {run['peak_rss_mb']:.0f} MB")
        print("median img/s after the first epoch: " + ", ".join(
            f"{name} {value:.0f}" for name, value in result["median_img_per_s"].items()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
