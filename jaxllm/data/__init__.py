"""Synthetic task generators and LM text pipelines."""
