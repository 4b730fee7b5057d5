"""Public checkpoints in and out of jaxllm: Hugging Face safetensors (Llama, Mistral, Qwen2, GPT-2)
and the orbax checkpoints that ``jaxllm.generate`` and training read."""

from jaxllm.interop.hf import load_hf, save_hf

__all__ = ["load_hf", "save_hf"]
