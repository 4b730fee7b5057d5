"""KV-cache decoding (prefill, decode steps, generation) and cache eviction policies.

``decode.generate`` serves softmax-attention decoders; ``policies`` holds the full, StreamingLLM and
H2O caches and TokenSelect's per-step selection.
"""
