"""In-context-learning theory studies."""
