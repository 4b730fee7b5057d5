"""Configs of the in-context-learning studies."""
