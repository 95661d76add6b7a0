"""The torch contestants of the benchmark: torch_ref's train and eval steps, eager or compiled,
on the CPU or a CUDA GPU, NCHW or channels_last.

The twin of `flax_resnet.studies.benchmark`; `flax_resnet.core.timing` times them.
"""

from __future__ import annotations

import torch

import torch_ref
from flax_resnet.core.timing import BenchConfig, Contestant, timed
from torch_ref.training.step import autocast, select_device, set_tf32


def make_torch_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          precision: str = "fp32", compile: bool = False):
    """`step(images, labels) -> loss`: forward, cross-entropy, backward, optimizer step.

    bf16 runs under `torch.autocast` on the images' device (parameters stay float32). With
    `compile`, forward and backward go through `torch.compile`; the optimizer step stays eager, as
    most scripts have it.
    """
    model.train()
    forward = torch.compile(model) if compile else model

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        with autocast(images.device, precision):
            loss = torch.nn.functional.cross_entropy(forward(images).float(), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def make_torch_eval_step(model: torch.nn.Module, precision: str = "fp32", compile: bool = False):
    """`step(images) -> logits` in eval mode under `torch.inference_mode`."""
    model.eval()
    forward = torch.compile(model) if compile else model

    def step(images):
        with torch.inference_mode(), autocast(images.device, precision):
            return forward(images)

    return step


def _synchronized(step, device: torch.device):
    if device.type != "cuda":
        return step

    def run():
        step()
        torch.cuda.synchronize(device)

    return run


def _cuda_peak_mib(step, device: torch.device):
    """The step's peak CUDA memory above what was allocated before it, in MiB."""
    def measure():
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20

    return measure


def torch_contestant(config: BenchConfig, images, labels, mode: str, compile: bool,
                     channels_last: bool = False) -> Contestant:
    """torch_ref's model, eager or under `torch.compile`, NCHW or channels_last, on the normalized
    float32 batch, on `config.device`."""
    framework = "torch.compile" if compile else ("torch.channels_last" if channels_last else "torch")
    contestant = Contestant(f"{framework} {mode}", framework, mode, setup=lambda: None, step=lambda: None)

    def setup():
        device = select_device(config.device)
        set_tf32(config.tf32)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        images_t = torch.from_numpy(images).to(device).contiguous(memory_format=layout)
        labels_t = torch.from_numpy(labels).long().to(device)
        torch.manual_seed(config.seed)
        model = torch_ref.create_model(config.model, **config.options).to(device, memory_format=layout)
        if mode == "train":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            step = make_torch_train_step(model, optimizer, config.precision, compile)
            contestant.step = _synchronized(lambda: step(images_t, labels_t), device)
        else:
            step = make_torch_eval_step(model, config.precision, compile)
            contestant.step = _synchronized(lambda: step(images_t), device)
        if device.type == "cuda":
            contestant.memory = _cuda_peak_mib(contestant.step, device)
        # torch.compile compiles on the first call (forward and backward graphs).
        contestant.first_step_seconds, _ = timed(contestant.step)
        if compile:
            contestant.compile_seconds = contestant.first_step_seconds

    contestant.setup = setup
    return contestant


def contestants(config: BenchConfig, images, labels, mode: str) -> list[Contestant]:
    """The torch contestants for `mode` ('train' or 'eval'): eager NCHW; with
    `config.torch_channels_last` eager channels_last too; with `config.torch_compile` under
    torch.compile (channels_last when `config.torch_channels_last`). images: normalized float32 NCHW."""
    select_device(config.device)  # no such device: ConfigError now, not a failed contestant
    found = [torch_contestant(config, images, labels, mode, compile=False)]
    if config.torch_channels_last:
        found.append(torch_contestant(config, images, labels, mode, compile=False, channels_last=True))
    if config.torch_compile:
        found.append(torch_contestant(config, images, labels, mode, compile=True,
                                      channels_last=config.torch_channels_last))
    return found


def details() -> dict:
    """What the summary records about the torch side."""
    found = {"torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        found["torch_cuda_device"] = torch.cuda.get_device_name()
    return found
