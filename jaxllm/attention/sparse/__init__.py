"""Block selection of the sparse prefill methods, separate from running a table.

``select(method, q, k, **options)`` returns what the block-sparse op runs
(``pallas_kernels.block_sparse.api.block_sparse_attention``):

* ``flexprefill``, ``xattention``: a :class:`BlockTable` per (batch, query head, query block);
* ``hip``: a :class:`VerticalSlash` of its selected keys (whole 64-key tiles of the sink and
  window part, the other keys as columns);
* ``minference``: a :class:`VerticalSlash` (blocks plus per-query-block key columns) when some
  head uses the vertical-slash pattern, else a :class:`BlockTable`;
* ``squeezed``: a :class:`VerticalSlash` whose columns are the kept fixed-context keys (a dense
  :class:`BlockTable` when there is no fixed context).

The methods whose selection is not a block table return what they choose instead:

* ``moba``: per query token its top-k key blocks, ``(idx int32 [B, H, T, k], ok bool [same])``
  (``moba.gate``): a per-token choice, so no table with query blocks larger than one;
* ``cca``: ``(local bool [T, S], core bool [T, S // g])``, the keys attended exactly and the core
  tokens each query sees (``cca.pair_mask``): the same for every head, since it is positional;
* ``hyper``: the top-level LSH bucket ranks ``(q int32 [B, H, T], k int32 [B, Hkv, S])``
  (``hyper.select``) by which queries and keys are sorted into diagonal blocks.

q is [B, T, H, D] and k [B, S, Hkv, D]; the T queries are the last T of the S positions.
"""

from jaxllm.attention.sparse import (cca, flexprefill, hip, hyper, minference, moba, squeezed,
                                     xattention)

SELECTORS = {
    "minference": minference.select,
    "flexprefill": flexprefill.select,
    "xattention": xattention.select,
    "hip": hip.select,
    "squeezed": squeezed.select,
    "moba": moba.gate,
    "cca": cca.pair_mask,
    "hyper": hyper.select,
}
METHODS = tuple(SELECTORS)


def select(method: str, q, k, **options):
  """The named method's selection for q [B, T, H, D] and k [B, S, Hkv, D] (see the module doc)."""
  if method not in SELECTORS:
    raise ValueError(f"sparse select: unknown method {method!r}; allowed: {sorted(SELECTORS)}")
  return SELECTORS[method](q, k, **options)
