"""Iterative Newton and gradient descent as in-context regressors (Fu et al. 2023).

Iterative Newton approximates the pseudo-inverse of S = X^T X by M_0 = alpha S,
M_{j+1} = 2 M_j - M_j S M_j, and predicts with w_j = M_j X^T y. With alpha = 1 / ||S S^T||_F every
eigenvalue of alpha S^2 lies in (0, 1], so the error 1 - alpha s^2 of each eigendirection squares at
every step: quadratic convergence after a start that is logarithmic in the condition number.
GD here is the paper's un-normalised w_{t+1} = w_t - eta X^T (X w_t - y).
"""

import numpy as np

from jaxllm.icl.gd import gd_weights


def newton_weights(x_BND, y_BN, num_iters: int) -> np.ndarray:
  """Weights w_j [num_iters + 1, B, d] of Iterative Newton iterations j = 0..num_iters."""
  if int(num_iters) != num_iters or num_iters < 0:
    raise ValueError(f"num_iters must be a non-negative integer, got {num_iters}")
  x = np.asarray(x_BND, np.float64)
  s_BDD = np.einsum("bnd,bne->bde", x, x)
  xty_BD = np.einsum("bnd,bn->bd", x, np.asarray(y_BN, np.float64))
  alpha_B = 1.0 / np.linalg.norm(s_BDD @ s_BDD.transpose(0, 2, 1), axis=(1, 2))
  m_BDD = alpha_B[:, None, None] * s_BDD
  ws = [np.einsum("bde,be->bd", m_BDD, xty_BD)]
  for _ in range(int(num_iters)):
    m_BDD = 2 * m_BDD - m_BDD @ s_BDD @ m_BDD
    ws.append(np.einsum("bde,be->bd", m_BDD, xty_BD))
  return np.stack(ws)


def gd_unnormalised_weights(x_BND, y_BN, lr: float, num_steps: int) -> np.ndarray:
  """w after ``num_steps`` of w <- w - lr X^T (X w - y) from zero (``gd_weights``, rate lr N)."""
  return np.asarray(gd_weights(np.asarray(x_BND, np.float32), np.asarray(y_BN, np.float32),
                               lr * x_BND.shape[1], num_steps), np.float64)


def iterations_to_reach(w_JBD, w_star_BD, rel_tol: float = 1e-3) -> int:
  """First iteration j whose mean relative weight error ||w_j - w*|| / ||w*|| is below rel_tol
  (-1 when none is)."""
  err = (np.linalg.norm(w_JBD - w_star_BD, axis=-1) / np.linalg.norm(w_star_BD, axis=-1)).mean(1)
  hits = np.flatnonzero(err < rel_tol)
  return int(hits[0]) if hits.size else -1
