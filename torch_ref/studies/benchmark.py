"""The torch contestants of the benchmark: torch_ref's train and eval steps, eager or compiled.

The twin of `flax_resnet.studies.benchmark`; `flax_resnet.studies.timing` times them.
"""

from __future__ import annotations

import torch

import torch_ref
from flax_resnet.studies.timing import BenchConfig, Contestant, timed


def make_torch_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          precision: str = "fp32", compile: bool = False):
    """`step(images, labels) -> loss`: forward, cross-entropy, backward, optimizer step.

    bf16 runs under `torch.autocast` (parameters stay float32). With `compile`, forward and
    backward go through `torch.compile`; the optimizer step stays eager, as most scripts have it.
    """
    model.train()
    forward = torch.compile(model) if compile else model

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
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
        with torch.inference_mode(), torch.autocast(
                "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return forward(images)

    return step


def torch_contestant(config: BenchConfig, images, labels, mode: str, compile: bool) -> Contestant:
    """torch_ref's model, eager or under `torch.compile`, on the normalized float32 NCHW batch."""
    name = f"torch{'.compile' if compile else ''} {mode}"
    contestant = Contestant(name, "torch.compile" if compile else "torch", mode, setup=lambda: None,
                            step=lambda: None)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels).long()

    def setup():
        torch.manual_seed(config.seed)
        model = torch_ref.create_model(config.model, **config.options)
        if mode == "train":
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            step = make_torch_train_step(model, optimizer, config.precision, compile)
            contestant.step = lambda: step(images_t, labels_t)
        else:
            step = make_torch_eval_step(model, config.precision, compile)
            contestant.step = lambda: step(images_t)
        # torch.compile compiles on the first call (forward and backward graphs).
        contestant.first_step_seconds, _ = timed(contestant.step)
        if compile:
            contestant.compile_seconds = contestant.first_step_seconds

    contestant.setup = setup
    return contestant


def contestants(config: BenchConfig, images, labels, mode: str) -> list[Contestant]:
    """The torch contestants for `mode` ('train' or 'eval'): eager, and with `config.torch_compile`
    under torch.compile. images: normalized float32 NCHW."""
    found = [torch_contestant(config, images, labels, mode, compile=False)]
    if config.torch_compile:
        found.append(torch_contestant(config, images, labels, mode, compile=True))
    return found


def details() -> dict:
    """What the summary records about the torch side."""
    return {"torch_threads": torch.get_num_threads()}
