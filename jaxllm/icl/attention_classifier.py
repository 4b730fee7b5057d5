"""The attention-only classifier of the bursty-sequences study (Reddy 2023, experiments/icl/bursty.py):
his minimal network for bursty in-context classification.

Two single-head causal softmax attention layers with residual connections (no MLPs between them),
then a 3-layer ReLU classifier on the final (query) token. A first-layer "previous token" head and a
second-layer head that matches the query against those copies form an induction head.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class CausalAttention(nnx.Module):
  """x_t + sum_{s <= t} softmax_s(q_t . k_s / sqrt(D)) v_s with full-width single-head projections."""

  def __init__(self, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    init = nnx.initializers.normal(stddev=dim ** -0.5)
    self.w_q = nnx.Param(init(rngs.params(), (dim, dim), param_dtype))
    self.w_k = nnx.Param(init(rngs.params(), (dim, dim), param_dtype))
    self.w_v = nnx.Param(init(rngs.params(), (dim, dim), param_dtype))

  def __call__(self, x_BTD, last_only=False):
    """Returns (x + attention output, probabilities); last_only keeps just the final query row."""
    x = x_BTD.astype(self.dtype)
    seq_len, dim = x.shape[1], x.shape[2]
    rows = x[:, -1:] if last_only else x
    q = rows @ jnp.asarray(self.w_q[...], self.dtype)
    k = x @ jnp.asarray(self.w_k[...], self.dtype)
    v = x @ jnp.asarray(self.w_v[...], self.dtype)
    logits_BTS = jnp.einsum("btd,bsd->bts", q, k).astype(jnp.float32) / jnp.sqrt(dim)
    causal_TS = jnp.tril(jnp.ones((seq_len, seq_len), bool))[-rows.shape[1]:]
    logits_BTS = jnp.where(causal_TS, logits_BTS, -jnp.inf)
    probs_BTS = jax.nn.softmax(logits_BTS, axis=-1)
    return rows + jnp.einsum("bts,bsd->btd", probs_BTS.astype(self.dtype), v), probs_BTS


class AttentionOnlyClassifier(nnx.Module):
  """Two attention layers + a 3-layer ReLU MLP on the last token; returns float32 label logits."""

  def __init__(self, dim: int, num_labels: int, hidden: int = 128, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    for name, value in (("dim", dim), ("num_labels", num_labels), ("hidden", hidden)):
      if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn1 = CausalAttention(dim, **kw)
    self.attn2 = CausalAttention(dim, **kw)
    self.mlp1 = nnx.Linear(dim, hidden, **kw)
    self.mlp2 = nnx.Linear(hidden, hidden, **kw)
    self.out = nnx.Linear(hidden, num_labels, **kw)

  def __call__(self, x_BTD, return_attention=False):
    h, probs1 = self.attn1(x_BTD)
    # The classifier reads only the query token, so layer 2 needs only the query's row.
    h, probs2 = self.attn2(h, last_only=True)
    z = jax.nn.relu(self.mlp1(h[:, -1]))
    z = jax.nn.relu(self.mlp2(z))
    logits_BL = self.out(z).astype(jnp.float32)
    if return_attention:
      return logits_BL, (probs1, probs2)
    return logits_BL
