"""Experiments: one module per study or run, each exposing run(config, workdir) -> dict."""
