"""Flax NNX models: the decoder-only transformer and the theory-study models."""
