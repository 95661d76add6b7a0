"""The framework-neutral core: plain Python, numpy and PIL, importing neither JAX nor torch."""
