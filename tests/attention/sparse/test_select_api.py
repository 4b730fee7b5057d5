"""The selection entry point and the attention registry entries of the sparse prefill methods."""

import functools
import inspect

import jax
import numpy as np
import pytest

from jaxllm.attention import METHODS, attention, get
from jaxllm.attention.sparse import SELECTORS, select
from tests.attention.sparse import helpers as th


def test_every_method_is_registered_with_its_selection_options():
  for name, selector in SELECTORS.items():
    assert name in METHODS
    assert "scale" in get(name).options
    kw = {n for n, p in inspect.signature(selector).parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(get(name).options) >= kw
    if name not in ("moba", "cca", "hyper"):  # the block-table methods run every backend
      assert get(name).impls == ("xla", "pallas", "auto")


def test_unknown_method_and_option():
  q, k, v = th.inputs(th.SHAPES["chunk"])
  with pytest.raises(ValueError, match="allowed"):
    select("quest", q, k)
  with pytest.raises(ValueError, match="unknown options"):
    attention(q, k, v, method="hip", impl="xla", top_k=3)
  with pytest.raises(ValueError, match="T <= S"):
    select("hip", k.repeat(2, axis=2), q[:, :10, :2])


def test_jit_matches_eager():
  q, k, v = th.inputs(th.SHAPES["chunk"])
  opts = dict(method="xattention", impl="xla", block=16, stride=4)
  eager = attention(q, k, v, **opts)
  jitted = jax.jit(functools.partial(attention, **opts))(q, k, v)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)
