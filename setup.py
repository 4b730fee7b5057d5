"""jaxllm: efficient-attention LMs, optimizer variants and ICL theory studies in JAX."""

from setuptools import find_packages, setup

# The text pipeline (jaxllm.data.text / tokenizer / pipeline); the default tests exercise it.
# importlib_resources: TFDS's builders need it but do not declare it.
TEXT_DATA = ["tensorflow-datasets==4.9.10", "grain==0.2.18", "array-record==0.8.6",
             "sentencepiece==0.2.3", "tokenizers==0.23.3", "importlib_resources==7.1.0"]

# The notebooks run in their own step of scripts/test.sh (nbmake), paired with jupytext.
NOTEBOOK_TESTS = ["nbmake==1.5.5", "jupytext==1.19.6", "ipykernel==7.4.0"]

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
        "data": [*TEXT_DATA],
        "notebook": ["jupyter", "ipywidgets", *NOTEBOOK_TESTS],
        "test": ["pytest>=8", "pytest-xdist>=3.6", *TEXT_DATA, *NOTEBOOK_TESTS],
        "bench": ["torch", "transformers>=4.40"],
    },
)
