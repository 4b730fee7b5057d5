"""jaxllm: efficient-attention LMs, optimizer variants and ICL theory studies in JAX."""

from setuptools import find_packages, setup

setup(
    name="jaxllm",
    version="0.1.0",
    description="Efficient-attention transformer LMs, Optax optimizer variants and in-context-learning studies in JAX/Flax.",
    python_requires=">=3.12",
    packages=find_packages(include=["jaxllm*", "pallas_kernels*", "experiments*", "configs*"]),
    install_requires=[
        "jax>=0.12,<0.13",
        "flax>=0.12,<0.13",
        "optax==0.2.8",
        "orbax-checkpoint>=0.12",
        "ml-collections>=1.1",
        "absl-py>=2.0",
        "numpy>=2.0",
        "scipy>=1.13",
        "scikit-learn>=1.5",
        "matplotlib>=3.9",
        "tensorboardX>=2.6",
        "tokamax>=0.0.17",
        "safetensors>=0.8",
        "tokenizers>=0.23",
    ],
    extras_require={
        "gpu": ["jax[cuda12]>=0.12,<0.13"],
        "tpu": ["jax[tpu]>=0.12,<0.13"],
        "data": ["grain>=0.2.18"],
        "notebook": ["jupyter", "ipywidgets"],
        "test": ["pytest>=8", "pytest-xdist>=3.6"],
        "bench": ["torch", "transformers>=4.40"],
    },
)
