"""Evaluation's torch half, the twin of `flax_resnet.evaluation`."""
