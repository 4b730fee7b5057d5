"""Linear read-outs of hidden states and error-similarity matching (Fu et al.; Guo et al. 2023).

A probe is the least-squares linear map (with bias) from a frozen layer's hidden state to a target;
it is the optimum that training a linear read-out with squared loss converges to. Two predictors are
compared by the cosine between their error vectors over the same test prompts.
"""

import numpy as np


def fit_linear_probe(h_PD, target_P, ridge: float = 1e-6):
  """Ridge-regularised least squares [w; b] from h_PD [P, D] to target_P [P] or [P, O]."""
  if ridge < 0:
    raise ValueError(f"ridge must be >= 0, got {ridge}")
  h = np.asarray(h_PD, np.float64)
  if h.ndim != 2 or h.shape[0] != len(target_P):
    raise ValueError(f"h_PD must be [P, D] with P = len(target) = {len(target_P)}, got {h.shape}")
  a = np.concatenate([h, np.ones((len(h), 1))], axis=1)
  reg = ridge * np.eye(a.shape[1])
  reg[-1, -1] = 0.0  # the bias is not shrunk
  return np.linalg.solve(a.T @ a + reg, a.T @ np.asarray(target_P, np.float64))


def apply_probe(probe, h_PD):
  h = np.asarray(h_PD, np.float64)
  return h @ probe[:-1] + probe[-1]


def error_cosine(err_a, err_b) -> float:
  """Cosine between two error vectors (1 = the two predictors err identically up to scale)."""
  a, b = np.ravel(err_a).astype(np.float64), np.ravel(err_b).astype(np.float64)
  if a.shape != b.shape:
    raise ValueError(f"error vectors differ in length: {a.shape} vs {b.shape}")
  return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def match_by_error_similarity(layer_errors_LP, algo_errors_JP):
  """For each layer, the algorithm iteration whose errors are most similar.

  Args:
    layer_errors_LP: [L, P] errors (prediction - target) of each layer's probe on P test prompts.
    algo_errors_JP: [J, P] errors of iterations j = 0..J-1 of an algorithm on the same prompts.

  Returns:
    (best index per layer [L], cosine matrix [L, J]).
  """
  la, al = np.asarray(layer_errors_LP, np.float64), np.asarray(algo_errors_JP, np.float64)
  if la.ndim != 2 or al.ndim != 2 or la.shape[1] != al.shape[1]:
    raise ValueError(f"need [L, P] and [J, P] error arrays with equal P, got {la.shape}, "
                     f"{al.shape}")
  la_n = la / np.maximum(np.linalg.norm(la, axis=1, keepdims=True), 1e-300)
  al_n = al / np.maximum(np.linalg.norm(al, axis=1, keepdims=True), 1e-300)
  cos_LJ = la_n @ al_n.T
  return cos_LJ.argmax(axis=1), cos_LJ
