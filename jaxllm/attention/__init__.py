"""Attention API: ``attention(q, k, v, method=..., impl=...)`` and the registered ``METHODS``."""

from jaxllm.attention.registry import IMPLS, METHODS, attention, check_shapes, get, register
from jaxllm.attention import methods as _methods  # registers the built-in methods

__all__ = ["IMPLS", "METHODS", "attention", "check_shapes", "get", "register"]
