"""Dynamic sparse prefill methods: a per-call block selection run by the block-sparse op.

Each method computes its selection with ``jaxllm.attention.sparse`` and runs it with
``pallas_kernels.block_sparse``: ``xla`` is the gather path (any backend), ``pallas`` the GPU
kernel (interpreted off GPU), ``auto`` the GPU kernel where its tiles fit, else ``xla``. The
options and defaults are the selection's (see each module in ``jaxllm.attention.sparse``);
``scale`` is the logit scale (default 1 / sqrt(D)).
"""

import inspect

from jaxllm.attention.registry import register
from jaxllm.attention.sparse import SELECTORS
from jaxllm.attention.sparse import _common


def _method(name: str):
  selector = SELECTORS[name]
  selector_params = inspect.signature(selector).parameters

  def fn(q, k, v, *, impl="auto", causal=True, scale=None, **options):
    _common.check_choice(name, "impl", impl, _common.IMPLS)
    _common.check_inputs(name, q, k, causal=causal)
    if "scale" in selector_params:
      options["scale"] = scale
    mask = selector(q, k, **options)
    return _common.run(name, q, k, v, mask, impl=impl, scale=scale)

  # The registry reads the keyword options off the signature: expose the selector's.
  params = [inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in "qkv"]
  params += [inspect.Parameter("impl", inspect.Parameter.KEYWORD_ONLY, default="auto"),
             inspect.Parameter("causal", inspect.Parameter.KEYWORD_ONLY, default=True)]
  params += [p for p in selector_params.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "scale"]
  params.append(inspect.Parameter("scale", inspect.Parameter.KEYWORD_ONLY, default=None))
  fn.__signature__ = inspect.Signature(params)
  fn.__name__ = name
  fn.__doc__ = f"{name} prefill attention; options as ``jaxllm.attention.sparse.{name}.select``."
  return fn


for _name in SELECTORS:
  register(_name, _method(_name), impls=("xla", "pallas", "auto"))
