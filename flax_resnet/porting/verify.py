"""Check a port by running both frameworks: the Flax model against its torch twin, stage by stage.

Both run in eval mode on the same random batch, in float32 with full-precision matmuls. Each
stage's error is max |flax - torch| / max |torch| over the whole activation, so it is relative to
the stage's scale and not inflated by values near zero. The first stage above the tolerance is
where the port went wrong: every earlier stage agreed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import numpy as np
import torch
from flax import nnx

import torch_ref
from flax_resnet.core.files import InputError
from flax_resnet.core.registry import MODELS
from flax_resnet.porting.state_dict import canonical_key

# Float32 through ResNet-152 stays near 1e-5 relative; a mapping mistake is orders above it.
DEFAULT_TOLERANCE = 1e-4


class VerificationError(InputError):
    """The torch twin could not even be built from the weights."""


@dataclasses.dataclass(frozen=True)
class StageError:
    """One stage's disagreement: max |flax - torch| and max |torch| over the activation."""

    stage: str
    max_abs_diff: float
    max_abs_reference: float

    @property
    def relative(self) -> float:
        """max |flax - torch| / max |torch| (NaN anywhere makes it NaN, which never passes)."""
        return self.max_abs_diff / max(self.max_abs_reference, np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """Per-stage errors in order ('logits' last) and the tolerance they were held to."""

    stages: tuple[StageError, ...]
    tolerance: float
    input_shape: tuple[int, ...]

    @property
    def first_divergence(self) -> StageError | None:
        """The first stage whose relative error is above the tolerance (or NaN), if any."""
        return next((s for s in self.stages if not s.relative <= self.tolerance), None)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None

    def lines(self) -> list[str]:
        """The report as printed by `port_weights.py --verify`."""
        n, c, h, w = self.input_shape
        width = max(len(s.stage) for s in self.stages)
        out = [f"verify: random batch {n}x{c}x{h}x{w}, eval mode, float32; "
               f"max |flax - torch| / max |torch| per stage:"]
        out += [f"  {s.stage:<{width}}  {s.relative:.1e}" for s in self.stages]
        bad = self.first_divergence
        if bad is None:
            out.append(f"verify: passed, every stage within {self.tolerance:.0e}")
        else:
            out.append(f"verify: FAILED, first diverging stage: {bad.stage} "
                       f"({bad.relative:.1e} > {self.tolerance:.0e})")
        return out


def default_image_size(name: str, kwargs: Mapping) -> int:
    """An input size the variant is meant for: 28 (MNIST net), 96 (d2l), 32 (CIFAR stem), 224."""
    if name == "mnist_resnet":
        return 28  # its classifier expects exactly 32x4x4 features
    if name == "d2l_resnet18":
        return 96
    return 32 if kwargs.get("stem", MODELS[name].stem) == "cifar" else 224


def torch_twin(state_dict: Mapping[str, np.ndarray], name: str, kwargs: Mapping) -> torch.nn.Module:
    """`torch_ref`'s model of the variant, loaded by torch's own strict `load_state_dict`.

    Keys spelled as `porting` accepts them (`module.`, `shortcut.`, `linear.`) are respelled first.
    Floating values of any precision (fp16, bf16, fp64) become float32, as the Flax model holds them.
    """
    with torch.device("meta"):  # no initialization: every tensor comes from the state_dict
        model = torch_ref.create_model(name, **kwargs)
    tensors = {canonical_key(k): torch.from_numpy(_float32(v)) for k, v in state_dict.items()}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise VerificationError(f"the torch twin of {name} rejects the weights: "
                                f"{' '.join(str(error).split())[:400]}") from None
    return model


def _float32(value) -> np.ndarray:
    value = np.array(value)
    return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value


def compare_stages(flax_model: nnx.Module, torch_model: torch.nn.Module, *, input_shape,
                   seed: int = 0, tolerance: float = DEFAULT_TOLERANCE) -> VerifyReport:
    """Run both models' `.stages()` on one random NCHW batch of `input_shape`; compare each stage.

    Both models are left in eval mode.
    """
    batch = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    flax_model.eval()
    torch_model.eval()
    with jax.default_matmul_precision("highest"):
        flax_stages = flax_model.stages(jax.numpy.asarray(batch.transpose(0, 2, 3, 1)))
    with torch.no_grad():
        torch_stages = torch_model.stages(torch.from_numpy(batch))
    errors = []
    for stage, reference in torch_stages.items():
        reference = reference.numpy()
        if reference.ndim == 4:
            reference = reference.transpose(0, 2, 3, 1)
        value = np.asarray(flax_stages[stage], np.float64)
        errors.append(StageError(stage, float(np.max(np.abs(value - reference))),
                                 float(np.max(np.abs(reference)))))
    return VerifyReport(tuple(errors), tolerance, tuple(input_shape))


def verify_port(flax_model: nnx.Module, torch_state_dict: Mapping[str, np.ndarray], name: str,
                kwargs: Mapping, *, batch_size: int = 2, image_size: int | None = None,
                seed: int = 0, tolerance: float = DEFAULT_TOLERANCE) -> VerifyReport:
    """Compare `flax_model` with the torch twin built from `torch_state_dict` (see module doc).

    Raises VerificationError if torch's strict load rejects the state_dict.
    """
    twin = torch_twin(torch_state_dict, name, kwargs)
    size = image_size or default_image_size(name, kwargs)
    shape = (batch_size, kwargs["in_channels"], size, size)
    return compare_stages(flax_model, twin, input_shape=shape, seed=seed, tolerance=tolerance)
