"""Cached decoding through the model's own modules (prefill, decode steps, generation) and cache
policies.

``decode.generate`` serves every attention method with a registered decode rule; ``cache`` holds the
per-layer KV caches and recurrent states the model's attention attends through; ``policies`` holds
the full, StreamingLLM and H2O caches and TokenSelect's per-step selection; ``sirllm`` runs
SirLLM's entropy-selected dialogue cache (and StreamingLLM's) by turns, positions as slots.
"""
