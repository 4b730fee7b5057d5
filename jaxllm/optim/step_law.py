"""Step Law: the AdamW learning rate and batch size fitted as power laws of model and data size.

lr* = 1.79 N^-0.713 D^0.307 and batch* = 0.58 D^0.571 tokens, with N the non-embedding parameter
count and D the training tokens.
"""

import math

import jax

from jaxllm.optim import labels


def step_law(n_params: float, n_tokens: float) -> tuple[float, float]:
  """Optimal AdamW (learning rate, batch size in tokens) for N params trained on D tokens."""
  if n_params <= 0 or n_tokens <= 0:
    raise ValueError(f"step_law needs positive n_params and n_tokens, got {n_params}, {n_tokens}")
  lr = 1.79 * n_params ** -0.713 * n_tokens ** 0.307
  batch = 0.58 * n_tokens ** 0.571
  return lr, batch


def non_embedding_params(params) -> int:
  """Parameter count without token/position embeddings (the LM head counts, as in Step Law)."""
  labs = jax.tree.leaves(labels.label_params(params))
  return sum(math.prod(x.shape) for lab, x in zip(labs, jax.tree.leaves(params))
             if lab != labels.EMBEDDING)
