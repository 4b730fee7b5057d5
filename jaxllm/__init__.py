"""jaxllm: efficient-attention LMs, optimizer variants and in-context-learning studies."""

__version__ = "0.1.0"
