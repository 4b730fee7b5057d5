"""Import of public checkpoints into jaxllm models."""
