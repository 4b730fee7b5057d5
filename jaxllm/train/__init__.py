"""Training loop, checkpointing and metric writers."""
