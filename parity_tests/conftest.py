"""Suite-wide numerics: float32 everywhere, XLA matmuls at full precision, no TF32 in torch.
Tests that hold several GB take turns across the pytest-xdist workers (`large_memory`).

XLA compiles without LLVM's expensive optimization passes (JAX's own `jax_disable_most_optimizations`,
as JAX's test suite runs): the suite compiles hundreds of programs and runs most of them a few
steps, so code generation was over a third of its time. Only machine code changes; every program's
HLO, and so what it computes, is the one training compiles. The environment variable is inherited by
the scripts the tests start; `JAX_DISABLE_MOST_OPTIMIZATIONS=0 make test` runs the suite fully optimized.

When pytest-xdist runs as many workers as there are cores (`make test`), each worker computes on
one thread, in torch and in XLA: two workers' thread pools on the same two cores spun and waited
on each other (the same tests took 13 % longer). Scripts started with their own XLA_FLAGS keep XLA's."""

import ctypes
import fcntl
import gc
import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= CORES:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()

import jax  # noqa: E402  (these read the variables above when they are first imported)
import pytest  # noqa: E402
import torch  # noqa: E402

from parity_tests.helpers.training_fixtures import make_mnist_folder

jax.config.update("jax_default_matmul_precision", "highest")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A torchvision MNIST folder with 64 train and 24 test images (random pixels and labels)."""
    root = tmp_path_factory.mktemp("data")
    make_mnist_folder(root, train=64, test=24)
    return root


@pytest.fixture
def float64_enabled():
    """JAX with 64-bit types for the duration of a test (float32 stays the default dtype of the models)."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(run folder, last metrics): mnist_resnet after one epoch on the embedded digits, made once."""
    from parity_tests.helpers.hub_fixtures import make_trained_run

    return make_trained_run(tmp_path_factory.mktemp("source") / "run")


@pytest.fixture
def large_memory(tmp_path_factory):
    """For a test that holds several GB (a deep net's float64 train step): the workers of one
    pytest-xdist session run such tests one at a time, each waiting for a file lock in the
    session's shared temporary folder, so two of them never meet in memory. Afterwards the memory
    goes back to the system: JAX's compiled ops are dropped and the C allocator trims its heap."""
    lock_path = tmp_path_factory.getbasetemp().parent / "large-memory.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            release_memory()
            fcntl.flock(lock, fcntl.LOCK_UN)


def release_memory() -> None:
    gc.collect()
    jax.clear_caches()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory stays with the process, as before
        pass
