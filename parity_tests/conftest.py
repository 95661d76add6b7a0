"""Suite-wide numerics: float32 everywhere, XLA matmuls at full precision, no TF32 in torch."""

import jax
import pytest
import torch

from parity_tests.training_fixtures import mnist_dir  # noqa: F401 - a fixture every test file may use

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def float64_enabled():
    """JAX with 64-bit types for the duration of a test (float32 stays the default dtype of the models)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(run folder, last metrics): mnist_resnet after one epoch on the embedded digits, made once."""
    from parity_tests.hub_fixtures import make_trained_run

    return make_trained_run(tmp_path_factory.mktemp("source") / "run")
