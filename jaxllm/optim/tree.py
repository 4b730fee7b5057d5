"""Tree helper shared by the per-leaf optimizers."""

import jax


def unzip(like, out, n: int) -> tuple:
  """Splits a tree (structure of ``like``) whose leaves are n-tuples into n trees."""
  treedef = jax.tree.structure(like)
  parts = treedef.flatten_up_to(out)
  return tuple(jax.tree.unflatten(treedef, [p[i] for p in parts]) for i in range(n))
