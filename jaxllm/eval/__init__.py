"""Evaluation of attention methods and long-context behaviour: fidelity against dense, planted and captured inputs."""
