"""Evaluation's Flax half: logits of prepared pixels (`flax_resnet.core.evaluation` drives it)."""
