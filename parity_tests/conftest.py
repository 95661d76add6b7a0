"""Suite-wide numerics: float32 everywhere, XLA matmuls at full precision, no TF32 in torch."""

import jax
import torch

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
