"""Evaluation: attention fidelity against dense (planted and captured inputs) and long-context retrieval and perplexity."""
