"""Block-sparse flash attention on TPU with dynamic per-(batch, head, query-block) tables.

jax's splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) already serves
masks known when the kernel is built (causal, local, chunked, numpy) and shared by every batch
element; its dynamic variant takes a dense [H, T, S] boolean mask. Content-dependent selectors
(FlexPrefill, MInference's block-sparse pattern, HiP) instead choose different key blocks for each
batch element, head and query block at run time. This kernel takes that choice directly as a
compact table ``kv_idx`` [B, H, nq, max_blocks] / ``kv_cnt`` [B, H, nq] read through
scalar-prefetched index maps, so its cost scales with the listed blocks, not with T * S.
"""

import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse_tpu import backward, forward, tables
from pallas_kernels.block_sparse_tpu.config import NUM_LANES, Config

_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _public_lse(lse):
  """Rows that see nothing carry +inf inside (zero backward probabilities), -inf outside."""
  return jnp.where(lse == jnp.inf, -jnp.inf, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt):
  o, lse = forward.forward(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt)
  return o, _public_lse(lse)


def _attend_fwd(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt):
  o, lse = forward.forward(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt)
  return (o, _public_lse(lse)), (q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt, o, lse)


def _attend_bwd(cfg, res, cotangents):
  q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt, o, lse = res
  do_BHTD, dlse = cotangents
  # d lse / d logit = p, so the lse cotangent folds into di: ds = p * (dp - (di - dlse)).
  di = jnp.sum(do_BHTD.astype(jnp.float32) * o.astype(jnp.float32), axis=-1) - dlse
  lse_BH1T, di_BH1T = lse[:, :, None, :], di[:, :, None, :]
  do_BHTD = do_BHTD.astype(q_BHTD.dtype)
  args = (q_BHTD, k_BKSD, v_BKSD, lse_BH1T, do_BHTD, di_BH1T)
  dq = backward.dq(cfg, *args, kv_idx, kv_cnt)
  dk, dv = backward.dkv(cfg, *args, tables.key_block_runs(kv_idx, kv_cnt, cfg))
  return dq, dk, dv, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _check_block(name, value):
  if not isinstance(value, int) or value <= 0 or value % NUM_LANES:
    raise ValueError(
        f"block_sparse_attention_tpu: {name} must be a positive multiple of {NUM_LANES} (the TPU "
        f"lane width, required by Mosaic for sequence blocks), got {value!r}")


def _check_options(window, sinks, softcap, scale):
  if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
    raise ValueError(
        f"block_sparse_attention_tpu: window must be a positive int or None, got {window!r}")
  if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
    raise ValueError(f"block_sparse_attention_tpu: sinks must be a non-negative int, got {sinks!r}")
  if sinks and window is None:
    raise ValueError("block_sparse_attention_tpu: sinks only apply together with a window")
  if softcap is not None and not softcap > 0:
    raise ValueError(
        f"block_sparse_attention_tpu: softcap must be positive or None, got {softcap!r}")
  if scale is not None and not scale > 0:
    raise ValueError(f"block_sparse_attention_tpu: scale must be positive or None, got {scale!r}")


def _check_inputs(q, k, v, kv_idx, kv_cnt, block_q, block_k):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError("block_sparse_attention_tpu: expects q [B, T, H, D] and k, v [B, S, Hkv, D]; "
                     f"got shapes q {q.shape}, k {k.shape}, v {v.shape}")
  b, t, h, d = q.shape
  if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
    raise ValueError("block_sparse_attention_tpu: k and v must be [B, S, Hkv, D] with q's B and D; "
                     f"got q {q.shape}, k {k.shape}, v {v.shape}")
  if k.shape[2] == 0 or h % k.shape[2]:
    raise ValueError(f"block_sparse_attention_tpu: query heads H={h} must be a multiple of kv "
                     f"heads Hkv={k.shape[2]}")
  if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _FLOAT_DTYPES:
    raise ValueError("block_sparse_attention_tpu: q, k, v must share one dtype among float32, "
                     f"bfloat16, float16; got {q.dtype}, {k.dtype}, {v.dtype}")
  _check_block("block_q", block_q)
  _check_block("block_k", block_k)
  nq = -(-t // block_q)
  if kv_idx.ndim != 4 or kv_idx.shape[:3] != (b, h, nq) or kv_idx.shape[3] < 1:
    raise ValueError(f"block_sparse_attention_tpu: kv_idx must be [B, H, nq, max_blocks] = "
                     f"[{b}, {h}, {nq}, >=1] (nq = ceil(T / block_q)), got {kv_idx.shape}")
  if kv_cnt.shape != (b, h, nq):
    raise ValueError(f"block_sparse_attention_tpu: kv_cnt must be [B, H, nq] = [{b}, {h}, {nq}], "
                     f"got {kv_cnt.shape}")
  for name, x in (("kv_idx", kv_idx), ("kv_cnt", kv_cnt)):
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(
          f"block_sparse_attention_tpu: {name} must be an integer array, got {x.dtype}")


def _pad_seq(x_BHLD, block):
  extra = -x_BHLD.shape[2] % block
  return jnp.pad(x_BHLD, ((0, 0), (0, 0), (0, extra), (0, 0))) if extra else x_BHLD


def block_sparse_attention_tpu(q, k, v, kv_idx, kv_cnt, *, block_q, block_k, causal=True,
                               scale=None, window=None, sinks=0, softcap=None, return_lse=False,
                               interpret=False):
  """Attention restricted to the key blocks each (batch, head, query block) lists.

  Args:
    q: [B, T, H, D] queries.
    k, v: [B, S, Hkv, D] keys and values, H a multiple of Hkv (GQA).
    kv_idx: int [B, H, nq, max_blocks], nq = ceil(T / block_q): key-block indices in
      [0, ceil(S / block_k)), distinct within a row; entries past the count are ignored.
    kv_cnt: int [B, H, nq]: how many leading entries of each row are valid (0: the query block
      outputs 0).
    block_q, block_k: block sizes, positive multiples of 128.
    causal: inside listed blocks, queries (the last T of the S positions) see only keys at or
      before them.
    scale: logit multiplier, default 1 / sqrt(D).
    window: optional element-wise sliding window inside listed blocks: keys with
      q - window < k <= q (causal) or |q - k| < window.
    sinks: with a window, the first ``sinks`` keys stay visible too.
    softcap: optional tanh cap on the scaled logits, softcap * tanh(logits / softcap).
    return_lse: also return the float32 log-sum-exp [B, H, T] of the (capped) logits, -inf on
      rows that see nothing; it is differentiable too (for merging with other attention parts).
    interpret: False to compile for TPU; on CPU, True runs the generic Pallas interpreter and a
      ``pltpu.InterpretParams`` the TPU interpreter (slower; simulates VMEM and DMAs).

  Returns:
    [B, T, H, D] in q's dtype (rows that see no key are 0), and the lse when requested.
    Differentiable in q, k, v.
  """
  _check_inputs(q, k, v, kv_idx, kv_cnt, block_q, block_k)
  _check_options(window, sinks, softcap, scale)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  cfg = Config(block_q=block_q, block_k=block_k, t=t, s=s, heads=h, kv_heads=hkv,
               causal=bool(causal), scale=scale, window=window, sinks=sinks,
               softcap=None if softcap is None else float(softcap), interpret=interpret)
  kv_idx, kv_cnt = tables.normalize(kv_idx, kv_cnt, cfg.num_kv_blocks)
  to_hm = lambda x, blk: _pad_seq(jnp.swapaxes(x, 1, 2), blk)  # [B, L, N, D] -> [B, N, L_pad, D]
  o, lse = _attend(cfg, to_hm(q, block_q), to_hm(k, block_k), to_hm(v, block_k), kv_idx, kv_cnt)
  o = jnp.swapaxes(o[:, :, :t], 1, 2)
  return (o, lse[:, :, :t]) if return_lse else o
