"""Flax NNX models: the decoder-only transformer and its blocks (the ICL studies' own small models live
in jaxllm.icl)."""
