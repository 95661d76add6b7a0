"""Several JAX processes as one run: start-up, agreeing on a signal, barriers. (Which part of each
batch a process reads is `flax_resnet.core.data.ProcessShard`.)

JAX's multi-controller runtime: every process runs this same program, the jitted step spans the
devices of all of them, and XLA's collectives (NCCL on GPUs, gloo over TCP on CPUs) join them.
Process 0 coordinates and is the only one that writes files and prints.
"""

from __future__ import annotations

import jax
import numpy as np

from flax_resnet.core.config import TrainConfig


def initialize(config: TrainConfig) -> None:
    """jax.distributed.initialize as the config says; nothing for a one-process run.

    Must run before anything touches a JAX device.
    """
    explicit = config.coordinator_address is not None
    if not (explicit or config.distributed):
        return
    # CPU processes talk over TCP through gloo (jax's default today; said here so it stays so).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes, process_id=config.process_id)
    else:
        jax.distributed.initialize()  # SLURM, Open MPI, Kubernetes, Cloud TPU: the cluster says


def is_main() -> bool:
    """True in process 0, the one that writes the run folder and prints."""
    return jax.process_index() == 0


def agree_on_signal(signum: int) -> int:
    """The largest of every process's `signum` (0: none): a decision all processes share. A collective."""
    if jax.process_count() == 1:
        return signum
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(signum))))


def sync(name: str) -> None:
    """Wait until every process got here (after process 0 changed files the others will read)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
