"""Block selection of the sparse prefill methods, separate from running a table.

``select(method, q, k, **options)`` returns what the block-sparse op runs
(``pallas_kernels.block_sparse.api.block_sparse_attention``):

* ``flexprefill``, ``xattention``, ``hip``: a :class:`BlockTable` per (batch, query head,
  query block);
* ``minference``: a :class:`VerticalSlash` (blocks plus per-query-block key columns) when some
  head uses the vertical-slash pattern, else a :class:`BlockTable`;
* ``squeezed``: a :class:`VerticalSlash` whose columns are the kept fixed-context keys (a dense
  :class:`BlockTable` when there is no fixed context).

q is [B, T, H, D] and k [B, S, Hkv, D]; the T queries are the last T of the S positions.
"""

from jaxllm.attention.sparse import flexprefill, hip, minference, squeezed, xattention

SELECTORS = {
    "minference": minference.select,
    "flexprefill": flexprefill.select,
    "xattention": xattention.select,
    "hip": hip.select,
    "squeezed": squeezed.select,
}


def select(method: str, q, k, **options):
  """The named method's selection for q [B, T, H, D] and k [B, S, Hkv, D] (see the module doc)."""
  if method not in SELECTORS:
    raise ValueError(f"sparse select: unknown method {method!r}; allowed: {sorted(SELECTORS)}")
  return SELECTORS[method](q, k, **options)
