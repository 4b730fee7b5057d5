"""Evaluation: attention fidelity and long-context retrieval and perplexity."""
