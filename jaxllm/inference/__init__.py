"""KV cache, prefill/decode loop and cache eviction policies."""
