"""Decode attention over a selected subset of KV-cache blocks, split-K across the selection."""
