"""Helpers shared by several Pallas ops: the backend choice, padding, lane widths, dot layouts.

The backend word of every op is ``impl`` in {xla, pallas, auto}: ``xla`` is the op's plain-JAX
path, ``pallas`` its kernel for this platform (Triton on GPU, Mosaic on TPU, the interpreted
Triton kernel elsewhere) and ``auto`` the platform's kernel where one runs natively and the shapes
fit it, else ``xla``. :func:`interpret_as` runs the other platform's kernel in the interpreter,
so CPU tests cover both kernels of an op.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

IMPLS = ("xla", "pallas", "auto")
PLATFORMS = ("gpu", "tpu")
NUM_LANES = 128  # TPU vreg lane width: Mosaic sequence blocks and row statistics use it
TRITON_MIN_TILE = 16  # smallest tile tl.dot accepts
NT_DIMS = (((1,), (1,)), ((), ()))  # a @ b.T
NN_DIMS = (((1,), (0,)), ((), ()))  # a @ b
TN_DIMS = (((0,), (0,)), ((), ()))  # a.T @ b

_SIMULATED = contextvars.ContextVar("pallas_kernels_simulated_platform", default=None)


@contextlib.contextmanager
def interpret_as(platform: str):
  """Within the block, ``impl="pallas"`` runs ``platform``'s kernel in the Pallas interpreter.

  The choice is made when an op is traced, so trace (``jax.jit``) inside the block. An explicit
  ``interpret=False`` still selects ``platform``'s kernel uninterpreted, for lowering it from
  another host (``jit(...).trace(...).lower(lowering_platforms=...)``).
  """
  if platform not in PLATFORMS:
    raise ValueError(f"interpret_as: platform must be one of {list(PLATFORMS)}, got {platform!r}")
  token = _SIMULATED.set(platform)
  try:
    yield
  finally:
    _SIMULATED.reset(token)


def check_impl(op: str, impl) -> None:
  if impl not in IMPLS:
    raise ValueError(f"{op}: impl must be one of {list(IMPLS)}, got {impl!r}")


def choose(op: str, impl: str, interpret=None, fits=lambda platform: True):
  """Resolves ``impl`` to (kernel platform, or None for the xla path; interpret flag).

  Args:
    op: the op's name, for the error message.
    impl: ``xla``, ``pallas`` or ``auto``.
    interpret: None runs the kernel compiled on its own hardware and interpreted elsewhere; True
      (or a ``pltpu.InterpretParams`` for the TPU interpreter) forces the interpreter.
    fits: platform -> whether the call's shapes suit that kernel (consulted by ``auto`` only;
      ``pallas`` lets the op's validation raise instead).
  """
  check_impl(op, impl)
  if impl == "xla":
    return None, False
  simulated = _SIMULATED.get()
  backend = jax.default_backend()
  native = simulated is None and backend in PLATFORMS
  platform = simulated or (backend if native else "gpu")
  if impl == "auto" and not (native and fits(platform)):
    return None, False
  return platform, (not native) if interpret is None else interpret


def dot_nn(a, b):
  """a @ b of 2-D tiles, accumulated in float32."""
  return jax.lax.dot_general(a, b, NN_DIMS, preferred_element_type=jnp.float32)


def dot_nt(a, b):
  """a @ b.T without materialising the transpose."""
  return jax.lax.dot_general(a, b, NT_DIMS, preferred_element_type=jnp.float32)


def dot_tn(a, b):
  """a.T @ b without materialising the transpose."""
  return jax.lax.dot_general(a, b, TN_DIMS, preferred_element_type=jnp.float32)


def is_pow2(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def pow2_at_least(n: int, floor: int) -> int:
  return max(floor, 1 << max(n - 1, 0).bit_length())


def pad_axis(x, axis: int, size: int):
  """Zero-pads ``axis`` of ``x`` up to ``size``."""
  if x.shape[axis] == size:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def widen(x_rl, n: int):
  """[rows, NUM_LANES] lane-replicated statistics -> [rows, n] by tiling whole vregs."""
  return jnp.tile(x_rl, (1, -(-n // NUM_LANES)))[:, :n]


def normalize_table(kv_idx, kv_cnt, num_blocks: int):
  """Clips a block table into range and repeats the last valid index past the count.

  Repeating the index makes skipped pipeline steps ask for the block already resident, so they
  issue no DMA; clipping keeps a malformed table from reading out of bounds.

  Returns:
    (kv_idx, kv_cnt) int32 with the shapes of the inputs.
  """
  max_blocks = kv_idx.shape[-1]
  cnt = jnp.clip(kv_cnt.astype(jnp.int32), 0, max_blocks)
  idx = jnp.clip(kv_idx.astype(jnp.int32), 0, num_blocks - 1)
  last = jnp.take_along_axis(idx, jnp.maximum(cnt - 1, 0)[..., None], axis=-1)
  valid = jnp.arange(max_blocks, dtype=jnp.int32) < cnt[..., None]
  return jnp.where(valid, idx, last), cnt
