"""Figures drawn from experiments' results.json, one module per study (``plot(results, path)``)."""
