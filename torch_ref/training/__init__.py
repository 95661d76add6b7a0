"""Training in PyTorch, the twin of `flax_resnet.training` (same data, pixels, start and schedule)."""
