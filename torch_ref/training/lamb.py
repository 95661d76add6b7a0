"""LAMB as timm's `timm.optim.Lamb` computes it: the torch twin of `flax_resnet.training.lamb`.

A torch.optim.Optimizer with timm's defaults and its order of operations (see the Flax module's
docstring for the steps), one parameter at a time as timm's single-tensor path. Weight decay is
per param group, as torchvision-style groups give it (`optim.decay_groups`); a group without
decay gets no trust ratio unless always_adapt.
"""

from __future__ import annotations

import torch

# timm.optim.Lamb's defaults, the Flax module's too (torch_ref loads no JAX, so they are repeated).
LAMB_BETAS = (0.9, 0.999)
LAMB_EPS = 1e-6
LAMB_WEIGHT_DECAY = 0.01
LAMB_MAX_GRAD_NORM = 1.0


class Lamb(torch.optim.Optimizer):
    """timm.optim.Lamb (without its caution and decoupled-decay options).

    max_grad_norm clips the global gradient norm over all groups (None: no clipping). The state of
    each parameter is its step count, exp_avg and exp_avg_sq, as torch's Adam keeps them.
    """

    def __init__(self, params, lr: float = 1e-3, bias_correction: bool = True,
                 betas: tuple[float, float] = LAMB_BETAS, eps: float = LAMB_EPS,
                 weight_decay: float = LAMB_WEIGHT_DECAY, grad_averaging: bool = True,
                 max_grad_norm: float | None = LAMB_MAX_GRAD_NORM, trust_clip: bool = False,
                 always_adapt: bool = False):
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay,
                        grad_averaging=grad_averaging, max_grad_norm=max_grad_norm, trust_clip=trust_clip,
                        always_adapt=always_adapt)
        super().__init__(params, defaults)

    def _clip_divisor(self) -> torch.Tensor | None:
        """max(global gradient norm / max_grad_norm, 1): each gradient is divided by it."""
        max_grad_norm = self.defaults["max_grad_norm"]
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if max_grad_norm is None or not grads:
            return None
        global_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return (global_norm / max_grad_norm).clamp(min=1.0)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip = self._clip_divisor()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if clip is None else p.grad / clip
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if group["grad_averaging"]:
                    exp_avg.lerp_(grad, 1 - beta1)
                else:
                    exp_avg.mul_(beta1).add_(grad)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    bias_correction1 = 1 - beta1 ** state["step"]
                    bias_correction2 = 1 - beta2 ** state["step"]
                else:
                    bias_correction1 = bias_correction2 = 1.0
                direction = (exp_avg / bias_correction1) / (exp_avg_sq.sqrt() / bias_correction2 ** 0.5 + group["eps"])
                if decay != 0:
                    direction.add_(p, alpha=decay)
                if decay != 0 or group["always_adapt"]:
                    direction.mul_(_trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(direction),
                                                group["trust_clip"]))
                p.add_(direction, alpha=-group["lr"])
        return loss


def _trust_ratio(weight_norm: torch.Tensor, direction_norm: torch.Tensor, trust_clip: bool) -> torch.Tensor:
    ratio = torch.where((weight_norm > 0) & (direction_norm > 0), weight_norm / direction_norm, 1.0)
    return ratio.clamp(max=1.0) if trust_clip else ratio
