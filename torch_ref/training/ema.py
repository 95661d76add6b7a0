"""An exponential moving average of the weights and BatchNorm buffers: the twin of `flax_resnet.training.ema`.

The class torchvision's reference trainer uses (references/classification/utils.py), written
here so that torch_ref needs none of torchvision's references: torch's own AveragedModel with
the exponential average as its `avg_fn` and `use_buffers=True`, so BatchNorm's running
statistics (and num_batches_tracked, averaged in float32 and truncated) are averaged with the
weights. The decay and the update timing are `flax_resnet.core.ema`'s.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

from flax_resnet.core.ema import in_warmup, update_due


class ExponentialMovingAverage(AveragedModel):
    """AveragedModel updating as decay * averaged + (1 - decay) * current, buffers included.

    Its state_dict holds 'n_averaged' and the model's entries under 'module.', the
    checkpoint['model_ema'] of torchvision's trainer.
    """

    def __init__(self, model: torch.nn.Module, decay: float, device: torch.device | str | None = None):
        def exponential_average(averaged, current, n_averaged):  # AveragedModel's avg_fn signature
            return decay * averaged + (1 - decay) * current

        super().__init__(model, device, avg_fn=exponential_average, use_buffers=True)
        self.decay = decay


def update_after_step(ema: ExponentialMovingAverage, model: torch.nn.Module, step: int, *, steps_per_epoch: int,
                      every: int, warmup_epochs: float) -> None:
    """Update the EMA after train step `step` (0-based over the run), as torchvision's
    train_one_epoch: after every `every`-th batch of an epoch, and in the warmup epochs with
    n_averaged set back to 0 afterwards, so that the next update copies the weights again."""
    if update_due(step, steps_per_epoch, every):
        ema.update_parameters(model)
        if in_warmup(step, steps_per_epoch, warmup_epochs):
            ema.n_averaged.fill_(0)
