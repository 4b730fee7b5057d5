"""Bursty in-context classification sequences (Reddy 2023).

K classes with means mu_k ~ N(0, I_D / D); an item of class k is (mu_k + eps * eta) / sqrt(1 + eps^2)
with eta ~ N(0, I_D / D). Every class carries one of L labels (a balanced random assignment); labels
are D-dimensional vectors drawn like the means. A sequence is N item-label pairs and a query item,
2N + 1 tokens, each the D content dimensions followed by a one-hot position (P dimensions) shifted by
a random offset per sequence. The target is the query's label index.

* training: with probability p_B a sequence is bursty (N / B classes, B copies each, the query class
  among them); otherwise its N items and the query are drawn i.i.d. from the Zipf(alpha) class
  distribution. Burstiness B = 0 means no bursty sequences.
* ICL test: N / B novel classes (fresh means), each given a distinct random label in context.
* flipped-label ICL test: the same with existing classes, whose labels are re-assigned in context.
* IWL test: i.i.d. items from the training classes with the query class absent from the context.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BurstyTask:
  """The fixed part of the task: class means, label vectors, class labels, class frequencies."""
  means_KD: jax.Array
  label_vectors_LD: jax.Array
  class_labels_K: jax.Array
  class_probs_K: jax.Array


def _positive_int(name, value):
  if int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value}")


def make_task(key, num_classes, num_labels, dim, alpha):
  """Draws class means and label vectors; class frequencies follow p(k) ~ k^-alpha."""
  _positive_int("num_classes", num_classes)
  _positive_int("num_labels", num_labels)
  _positive_int("dim", dim)
  if num_classes < num_labels:
    raise ValueError(f"num_classes ({num_classes}) must be at least num_labels ({num_labels})")
  if alpha < 0:
    raise ValueError(f"alpha must be non-negative, got {alpha}")
  k_mu, k_lab, k_assign = jax.random.split(key, 3)
  means = jax.random.normal(k_mu, (num_classes, dim)) / jnp.sqrt(dim)
  label_vectors = jax.random.normal(k_lab, (num_labels, dim)) / jnp.sqrt(dim)
  class_labels = jax.random.permutation(k_assign, jnp.arange(num_classes) % num_labels)
  ranks = jnp.arange(1, num_classes + 1, dtype=jnp.float32)
  probs = ranks ** -alpha
  return BurstyTask(means, label_vectors, class_labels, probs / probs.sum())


def _items(key, means_ND, eps):
  noise = jax.random.normal(key, means_ND.shape) / jnp.sqrt(means_ND.shape[-1])
  return (means_ND + eps * noise) / jnp.sqrt(1.0 + eps * eps)


def _assemble(key, item_ND, label_ND, query_D, pos_dim):
  """Interleaves items and labels, appends the query and a randomly shifted one-hot position."""
  n, d = item_ND.shape
  seq_len = 2 * n + 1
  content_TD = jnp.concatenate(
      [jnp.stack([item_ND, label_ND], axis=1).reshape(2 * n, d), query_D[None]], axis=0)
  shift = jax.random.randint(key, (), 0, pos_dim - seq_len + 1)
  pos_TP = jax.nn.one_hot(jnp.arange(seq_len) + shift, pos_dim)
  return jnp.concatenate([content_TD, pos_TP], axis=-1)


def _check_shape_args(num_examples, burstiness, pos_dim):
  _positive_int("num_examples", num_examples)
  if burstiness < 0 or (burstiness and num_examples % burstiness):
    raise ValueError(f"burstiness must be 0 or divide num_examples ({num_examples}), "
                     f"got {burstiness}")
  if pos_dim < 2 * num_examples + 1:
    raise ValueError(f"pos_dim must be at least 2 * num_examples + 1 = {2 * num_examples + 1}, "
                     f"got {pos_dim}")


def _bursty_classes(key, probs_K, num_examples, burstiness):
  """N / B distinct classes (drawn by frequency), B copies each, shuffled; query among them."""
  k_cls, k_perm, k_q = jax.random.split(key, 3)
  num_distinct = num_examples // burstiness
  distinct = jax.random.choice(k_cls, probs_K.shape[0], (num_distinct,), replace=False, p=probs_K)
  slots = jax.random.permutation(k_perm, jnp.repeat(jnp.arange(num_distinct), burstiness))
  query_slot = jax.random.randint(k_q, (), 0, num_distinct)
  return distinct, slots, query_slot


def _train_sequence(key, task, num_examples, burstiness, p_bursty, eps, pos_dim):
  k_b, k_burst, k_iid, k_q, k_items, k_pos = jax.random.split(key, 6)
  num_classes = task.class_probs_K.shape[0]
  iid = jax.random.choice(k_iid, num_classes, (num_examples,), p=task.class_probs_K)
  query_iid = jax.random.choice(k_q, num_classes, (), p=task.class_probs_K)
  if burstiness:
    distinct, slots, query_slot = _bursty_classes(k_burst, task.class_probs_K, num_examples,
                                                  burstiness)
    is_bursty = jax.random.bernoulli(k_b, p_bursty)
    ctx = jnp.where(is_bursty, distinct[slots], iid)
    query = jnp.where(is_bursty, distinct[query_slot], query_iid)
  else:
    ctx, query = iid, query_iid
  items = _items(k_items, task.means_KD[jnp.append(ctx, query)], eps)
  labels = task.class_labels_K[ctx]
  tokens = _assemble(k_pos, items[:-1], task.label_vectors_LD[labels], items[-1], pos_dim)
  return tokens, task.class_labels_K[query]


def _icl_sequence(key, task, num_examples, burstiness, eps, pos_dim, novel):
  k_cls, k_means, k_lab, k_items, k_pos = jax.random.split(key, 5)
  num_labels = task.label_vectors_LD.shape[0]
  num_distinct = num_examples // burstiness
  distinct, slots, query_slot = _bursty_classes(k_cls, task.class_probs_K, num_examples,
                                                burstiness)
  if novel:
    means = jax.random.normal(k_means, (num_distinct, task.means_KD.shape[1]))
    means = means / jnp.sqrt(task.means_KD.shape[1])
  else:
    means = task.means_KD[distinct]
  labels = jax.random.choice(k_lab, num_labels, (num_distinct,), replace=False)
  items = _items(k_items, means[jnp.append(slots, query_slot)], eps)
  tokens = _assemble(k_pos, items[:-1], task.label_vectors_LD[labels[slots]], items[-1], pos_dim)
  return tokens, labels[query_slot]


def _iwl_sequence(key, task, num_examples, eps, pos_dim):
  k_q, k_ctx, k_items, k_pos = jax.random.split(key, 4)
  num_classes = task.class_probs_K.shape[0]
  query = jax.random.choice(k_q, num_classes, (), p=task.class_probs_K)
  probs = task.class_probs_K.at[query].set(0.0)
  ctx = jax.random.choice(k_ctx, num_classes, (num_examples,), p=probs / probs.sum())
  items = _items(k_items, task.means_KD[jnp.append(ctx, query)], eps)
  labels = task.class_labels_K[ctx]
  tokens = _assemble(k_pos, items[:-1], task.label_vectors_LD[labels], items[-1], pos_dim)
  return tokens, task.class_labels_K[query]


_STATIC = ("batch_size", "num_examples", "burstiness", "pos_dim")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _jit_train(key, task, batch_size, num_examples, burstiness, p_bursty, eps, pos_dim):
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k: _train_sequence(k, task, num_examples, burstiness, p_bursty, eps,
                                            pos_dim))(keys)


@functools.partial(jax.jit, static_argnames=_STATIC + ("novel",))
def _jit_icl(key, task, batch_size, num_examples, burstiness, eps, pos_dim, novel):
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k: _icl_sequence(k, task, num_examples, burstiness, eps, pos_dim,
                                          novel))(keys)


@functools.partial(jax.jit, static_argnames=("batch_size", "num_examples", "pos_dim"))
def _jit_iwl(key, task, batch_size, num_examples, eps, pos_dim):
  keys = jax.random.split(key, batch_size)
  return jax.vmap(lambda k: _iwl_sequence(k, task, num_examples, eps, pos_dim))(keys)


def sample_train(key, task, batch_size, *, num_examples, burstiness, p_bursty, eps, pos_dim):
  """Training batch: tokens (B, 2N + 1, D + P) float32 and label targets (B,) int32."""
  _check_shape_args(num_examples, burstiness, pos_dim)
  if not 0.0 <= p_bursty <= 1.0:
    raise ValueError(f"p_bursty must lie in [0, 1], got {p_bursty}")
  return _jit_train(key, task, batch_size, num_examples, burstiness, p_bursty, eps, pos_dim)


def sample_icl(key, task, batch_size, *, num_examples, burstiness, eps, pos_dim, novel=True):
  """ICL test batch: novel classes (or, novel=False, existing classes with flipped labels)."""
  _check_shape_args(num_examples, burstiness, pos_dim)
  if burstiness < 1:
    raise ValueError("the ICL test needs burstiness >= 1 so the query class appears in context")
  return _jit_icl(key, task, batch_size, num_examples, burstiness, eps, pos_dim, novel)


def sample_iwl(key, task, batch_size, *, num_examples, eps, pos_dim):
  """IWL test batch: training classes, query class absent from the context."""
  _check_shape_args(num_examples, 0, pos_dim)
  return _jit_iwl(key, task, batch_size, num_examples, eps, pos_dim)
