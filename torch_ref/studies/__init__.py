"""The torch halves of `flax_resnet.studies`."""
