"""XLA's optimizations, back on for the programs that spend their time computing.

The suite compiles with most of XLA's optimizations off (see conftest.py): nearly all of its
programs run a few times, and compiling them was a third of its time. float64 convolutions are
the exception. XLA:CPU has no library kernel for them and emits their loops itself, and those
loops, unoptimized, ran a grouped ResNeXt-101's float64 forward 5x slower (7.2 s against 1.3 s,
compiling included). The setting is read when a program is compiled, so a program compiled
inside `optimized()` keeps its optimizations when it runs again later.
"""

from __future__ import annotations

import contextlib

import jax

FLAG = "jax_disable_most_optimizations"


@contextlib.contextmanager
def optimized():
    """Programs compiled within the block are compiled with XLA's full optimizations."""
    previous = jax.config.read(FLAG)
    jax.config.update(FLAG, False)
    try:
        yield
    finally:
        jax.config.update(FLAG, previous)
