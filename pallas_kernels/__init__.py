"""Pallas kernels, one folder per op: reference, kernel(s), ops with custom_vjp."""
