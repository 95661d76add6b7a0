"""The data side, measured: loader throughput against torchvision's, the memory of a streamed
training run, and the in-memory path against streaming on the same images.

Plain Python (no JAX, no torch at import): our loader is `flax_resnet.core.data`, the torchvision
contestant is `torch_ref.studies.data_loading`, and training runs are `scripts/train.py` in a
subprocess whose whole process tree (loader workers included) is sampled for memory. JAX is
imported only to time the device step of a measurement with torchvision's whole training preset.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from flax_resnet.core import frameworks

REPO = Path(__file__).resolve().parents[2]
# ImageNet's common shapes; most of its photos are 500 pixels on the long side.
SHAPES = ((500, 375), (500, 333), (375, 500), (500, 375), (500, 400))


# ---------------------------------------------------------------------------------------------
# Generated trees
# ---------------------------------------------------------------------------------------------

def photo_like(rng: np.random.Generator, width: int, height: int):
    """A JPEG-friendly picture: smooth colour fields plus grain, about 100 KB at quality 90."""
    from PIL import Image

    low = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), np.int16)
    grain = rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_jpeg_tree(root, images: int, classes: int = 10, held_out: float = 0.0, seed: int = 0,
                    progress: bool = True) -> Path:
    """root/train/<class>/<n>.JPEG (and root/val/... with `held_out` of them) of ImageNet's sizes.
    An existing complete tree is reused."""
    from tqdm.auto import tqdm

    root = Path(root)
    marker = root / f".complete-{images}-{classes}-{held_out}-{seed}"
    if marker.exists():
        return root
    rng = np.random.default_rng(seed)
    for index in tqdm(range(images), desc=f"writing {images} JPEGs", disable=not progress, unit="img"):
        split = "val" if rng.random() < held_out else "train"
        folder = root / split / f"class{index % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        photo_like(rng, *SHAPES[index % len(SHAPES)]).save(folder / f"{index:07d}.JPEG", quality=90)
    marker.write_text("")
    return root


def tree_bytes(root) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*.JPEG"))


# ---------------------------------------------------------------------------------------------
# Loader throughput
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LoaderBench:
    """One loader measurement: `batches` timed after `warmup` batches (worker start included there)."""

    root: str
    workers: int = 2
    batch_size: int = 64
    image_size: int = 224
    batches: int = 20
    warmup: int = 2
    rounds: int = 2  # contestants alternate this many times; the best round counts
    auto_augment: str | None = None  # a torchvision policy after the crop and flip, e.g. 'ta_wide'
    random_erase: float = 0.0  # torchvision's RandomErasing probability (ours: on the device)

    @property
    def whole_preset(self) -> bool:
        """With a policy or erasing, torchvision's side is its reference's whole training preset
        (normalized float32 out of the workers), and ours is also timed with its device step."""
        return self.auto_augment is not None or self.random_erase > 0


def our_config(bench: LoaderBench):
    """The TrainConfig of a streamed training run with the benchmark's data settings."""
    from flax_resnet.core.config import TrainConfig

    return TrainConfig(model="resnet50", dataset="imagefolder", data_dir=bench.root, image_size=bench.image_size,
                       workers=bench.workers, batch_size=bench.batch_size, auto_augment=bench.auto_augment,
                       random_erase=bench.random_erase)


def our_policy(bench: LoaderBench):
    """The augmentation policy our loader's workers apply after the crop and flip (None without one)."""
    from flax_resnet.core.data.select import host_transforms

    return host_transforms(our_config(bench), channels=3).policy


def our_batches(bench: LoaderBench, epoch: int):
    """The streaming loader's training batches (RandomResizedCrop + flip, then the policy if any;
    uint8 NHWC)."""
    from flax_resnet.core.data import load_data

    data = load_data(our_config(bench))
    try:
        yield from data.train_batches(epoch, seed=0, batch_size=bench.batch_size)
    finally:
        data.close()  # its workers stop with the round


def our_device_step(bench: LoaderBench):
    """What our trainers do to a streamed batch on the device before the model: a jitted
    `train_transform` with the AugmentSpec a training run derives (normalize, then random
    erasing; the host already cropped and flipped). Returns step(uint8 NHWC images, index) ->
    float32 NHWC, waited for."""
    import jax

    from flax_resnet.core.data import load_data
    from flax_resnet.core.plan import AUGMENT_STREAM, prepare_run
    from flax_resnet.training.device_transforms import train_transform

    config = our_config(bench)
    data = load_data(config)  # scans the tree; no worker starts before a batch is asked for
    try:
        augment = prepare_run(config, data).augment
    finally:
        data.close()
    augment_key = jax.random.fold_in(jax.random.key(0), AUGMENT_STREAM)
    # as the train step: its augmentation key folded with the step, all in one jitted call
    transform = jax.jit(lambda index, images: train_transform(jax.random.fold_in(augment_key, index), images, augment))

    def step(images, index: int):
        return transform(index, images).block_until_ready()

    # Compiled here, not in a round: while a round's first batch compiled, the workers would fill
    # their queues, and the timed batches would come out of them.
    step(np.zeros((bench.batch_size, bench.image_size, bench.image_size, 3), np.uint8), 0)
    return step


def _cpu_seconds() -> tuple[float, float]:
    """(this process's CPU seconds, its descendants' CPU seconds): loader workers count there."""
    import psutil

    me = psutil.Process()
    own = sum(me.cpu_times()[:2])
    children = 0.0
    for child in me.children(recursive=True):
        try:
            children += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return own, children


class PeakMemory:
    """Samples `process_tree_memory(pid)` in a thread while the block runs; `peak` holds the maxima."""

    def __init__(self, pid: int, seconds: float = 0.5):
        self.pid, self.seconds = pid, seconds
        self.peak = {"rss": 0, "pss": 0, "main_rss": 0, "largest_child_rss": 0, "processes": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            for key, value in process_tree_memory(self.pid).items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(self.seconds)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def megabytes(self) -> dict[str, float]:
        return {f"peak_{key}_mb": value / 2**20 for key, value in self.peak.items() if key != "processes"}


def time_loader(make_batches, bench: LoaderBench, device_step=None) -> dict[str, float]:
    """img/s over `bench.batches` batches, each copied once out of the loader (as a transfer to a
    device reads every byte) and then, with `device_step`, handed to it (its time counts); the
    CPU time per image of the workers and of this process over the same batches (what a core of
    an unloaded machine would deliver); the seconds to the first batch; the peak memory of this
    process and its workers."""
    with PeakMemory(os.getpid()) as memory:
        result = _time_batches(make_batches, bench, device_step)
    return {**result, **memory.megabytes()}


def _time_batches(make_batches, bench: LoaderBench, device_step=None) -> dict[str, float]:
    start = time.perf_counter()
    batches = make_batches()
    first = timed_start = cpu_start = None
    count, device_seconds = 0, 0.0
    for index, batch in enumerate(batches):
        images = np.array(batch["image"] if isinstance(batch, dict) else batch[0])
        if first is None:
            first = time.perf_counter() - start  # the loader's alone
        if device_step is not None:
            step_start = time.perf_counter()
            device_step(images, index)
            if index + 1 > bench.warmup:
                device_seconds += time.perf_counter() - step_start
        if index + 1 == bench.warmup:
            timed_start, cpu_start = time.perf_counter(), _cpu_seconds()
        elif index + 1 > bench.warmup:
            count += images.shape[0]
        if index + 1 == bench.warmup + bench.batches:
            break
    seconds = time.perf_counter() - timed_start
    cpu_end = _cpu_seconds()
    if hasattr(batches, "close"):
        batches.close()
    return {"img_per_s": count / seconds, "first_batch_s": first,
            "worker_cpu_ms_per_img": 1e3 * (cpu_end[1] - cpu_start[1]) / count,
            "main_cpu_ms_per_img": 1e3 * (cpu_end[0] - cpu_start[0]) / count,
            "device_step_ms_per_img": 1e3 * device_seconds / count}


def loader_benchmark(bench: LoaderBench, progress=lambda message: None) -> dict[str, Any]:
    """Ours against torchvision's ImageFolder + DataLoader with the same transforms, the same files
    and worker count, alternating `rounds` times; the best round of each.

    With `bench.whole_preset`, torchvision's workers also normalize and erase, as its reference
    does, while ours hand uint8 to the device; so ours takes a third turn, 'ours_device_step',
    with the device step timed on this CPU after each batch.
    """
    torchvision_side = frameworks.module("loader", "torch")
    policy = our_policy(bench)
    interpolation = policy.interpolation if policy is not None else None  # the same work on both sides
    contestants = {"ours": (lambda epoch: our_batches(bench, epoch), None),
                   "torchvision": (lambda epoch: torchvision_side.torchvision_batches(bench, epoch, interpolation),
                                   None)}
    if bench.whole_preset:
        contestants["ours_device_step"] = (contestants["ours"][0], our_device_step(bench))
    results: dict[str, list] = {name: [] for name in contestants}
    for round_ in range(bench.rounds):
        for name, (make, device_step) in contestants.items():
            progress(f"round {round_ + 1}/{bench.rounds}: {name}")
            results[name].append(time_loader(lambda: make(round_), bench, device_step))
    best = {name: max(runs, key=lambda r: r["img_per_s"]) for name, runs in results.items()}
    out = {"bench": dataclasses.asdict(bench), "images": sum(1 for _ in Path(bench.root, "train").rglob("*.JPEG")),
           "mean_jpeg_kb": tree_bytes(bench.root) / 1024 / max(1, sum(1 for _ in Path(bench.root).rglob("*.JPEG"))),
           "rounds": results, "load_average": os.getloadavg()[0], "cpu": _cpu_name()}
    for name, result in best.items():
        out[f"{name}_img_per_s"] = result["img_per_s"]
        out[f"{name}_img_per_s_per_worker"] = result["img_per_s"] / max(bench.workers, 1)
        out[f"{name}_first_batch_s"] = result["first_batch_s"]
        # medians over rounds: CPU time hardly depends on the machine's load
        for key in ("worker_cpu_ms_per_img", "main_cpu_ms_per_img", "device_step_ms_per_img"):
            out[f"{name}_{key}"] = float(np.median([r[key] for r in results[name]]))
        out[f"{name}_img_per_s_per_busy_core"] = 1e3 / out[f"{name}_worker_cpu_ms_per_img"]
        for key in ("peak_rss_mb", "peak_pss_mb"):
            out[f"{name}_{key}"] = max(r[key] for r in results[name])
    out["ratio"] = out["ours_img_per_s"] / out["torchvision_img_per_s"]
    out["cpu_ratio"] = out["torchvision_worker_cpu_ms_per_img"] / out["ours_worker_cpu_ms_per_img"]
    if bench.whole_preset:
        out["device_step_ratio"] = out["ours_device_step_img_per_s"] / out["torchvision_img_per_s"]
    return out


# ---------------------------------------------------------------------------------------------
# Training runs in a subprocess, their memory sampled
# ---------------------------------------------------------------------------------------------

def process_tree_memory(pid: int) -> dict[str, int]:
    """Bytes of a process and all its descendants: total RSS and PSS, the process's own RSS, the
    largest descendant's RSS, and the process count. RSS counts shared pages once per process;
    PSS divides them between the processes sharing them."""
    import psutil

    memory = {"rss": 0, "pss": 0, "main_rss": 0, "largest_child_rss": 0, "processes": 0}
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return memory
    for process in processes:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        memory["rss"] += info.rss
        memory["pss"] += getattr(info, "pss", info.rss)
        memory["processes"] += 1
        if process.pid == pid:
            memory["main_rss"] = info.rss
        else:
            memory["largest_child_rss"] = max(memory["largest_child_rss"], info.rss)
    return memory


def run_training(argv: list[str], *, timeout: float, sample_seconds: float = 0.5) -> dict[str, Any]:
    """scripts/train.py with `argv`; peak RSS and PSS of its process tree, and its metrics.jsonl."""
    command = [sys.executable, str(REPO / "scripts" / "train.py"), *argv, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    started = time.perf_counter()
    with PeakMemory(process.pid, sample_seconds) as memory:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            raise RuntimeError(f"training run timed out after {timeout} s:\n{output[-2000:]}") from None
    peak = memory.peak
    if process.returncode != 0:
        raise RuntimeError(f"training run failed ({process.returncode}):\n{output[-2000:]}")
    workdir = Path(argv[argv.index("--workdir") + 1])
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {"argv": argv, "seconds": time.perf_counter() - started, "peak_rss_mb": peak["rss"] / 2**20,
            "peak_pss_mb": peak["pss"] / 2**20, "peak_main_rss_mb": peak["main_rss"] / 2**20,
            "peak_worker_rss_mb": peak["largest_child_rss"] / 2**20, "processes": peak["processes"],
            "history": history, "output_tail": output.splitlines()[-3:]}


def memory_benchmark(trees: dict[int, Path], workdir: Path, *, workers: int = 2, model: str = "mnist_resnet",
                     image_size: int = 28, batch_size: int = 256, rounds: int = 1, timeout: float = 7200,
                     extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Peak memory of one streamed training epoch (and its evaluation) on each tree (images -> path),
    the sizes taking turns `rounds` times. The default model is the smallest, so the run is the
    loader's work: every JPEG decoded whole."""
    results = []
    for _, (images, root) in itertools.product(range(rounds), trees.items()):
        argv = ["--dataset", "imagefolder", "--data-dir", str(root), "--model", model, "--image-size", str(image_size),
                "--batch-size", str(batch_size), "--epochs", "1", "--workers", str(workers),
                "--workdir", str(Path(workdir) / f"memory-{images}-{time.strftime('%Y%m%d-%H%M%S')}"), *extra]
        results.append({"images": images, **run_training(argv, timeout=timeout)})
    return {"runs": results, "load_average": os.getloadavg()[0], "cpu": _cpu_name()}


def write_embedded_digits_tree(root) -> Path:
    """The embedded MNIST digits, as the in-memory path splits them, as PNGs in an ImageFolder."""
    from PIL import Image

    from flax_resnet.core.data import load_dataset

    root = Path(root)
    if (root / ".complete").exists():
        return root
    data = load_dataset("embedded_mnist")
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("val", data.test_images, data.test_labels)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(folder / f"{index:05d}.png")
    (root / ".complete").write_text("")
    return root


def in_memory_vs_streamed(root: Path, workdir: Path, *, epochs: int = 4, rounds: int = 2,
                          timeout: float = 3600) -> dict[str, Any]:
    """The embedded digits trained in memory and streamed from the same images as PNGs (workers 0
    and 2): mnist_resnet, batch 64, fp32, the three taking turns `rounds` times. img/s of the
    training loop per epoch, and the median over every epoch after the first of each kind."""
    common = ["--model", "mnist_resnet", "--batch-size", "64", "--epochs", str(epochs), "--image-size", "28"]
    runs = {
        "in_memory": ["--dataset", "embedded_mnist", *common],
        "streamed_workers0": ["--dataset", "imagefolder", "--data-dir", str(root), "--workers", "0",
                              "--eval-crop-fraction", "1", *common],
        "streamed_workers2": ["--dataset", "imagefolder", "--data-dir", str(root), "--workers", "2",
                              "--eval-crop-fraction", "1", *common],
    }
    results = []
    for _, (name, argv) in itertools.product(range(rounds), runs.items()):
        fresh = Path(workdir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        results.append({"name": name, **run_training([*argv, "--workdir", str(fresh)], timeout=timeout)})
    medians = {name: float(np.median([r["images_per_sec"] for run in results if run["name"] == name
                                      for r in run["history"][1:]])) for name in runs}
    return {"runs": results, "median_img_per_s": medians, "load_average": os.getloadavg()[0], "cpu": _cpu_name()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()
