"""Chunked decayed linear attention (Lightning attention tiling) as Pallas kernels."""
