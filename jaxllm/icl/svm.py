"""The attention max-margin problem of Tarzanagh et al. (Att-SVM).

  W_mm = argmin ||W||_F  s.t.  (x_{i,opt_i} - x_{i,t})^T W z_i >= 1  for every sample i and t != opt_i.

Each constraint is <A_it, W> >= 1 with A_it = (x_{i,opt_i} - x_{i,t}) z_i^T, so this is a hard-margin
SVM without bias over the matrices A_it. We solve its dual, a bound-constrained QP
  max_a 1^T a - 0.5 a^T G a, a >= 0, G = <A_it, A_js>,
with scipy's L-BFGS-B and then polish on the active set (where the constraints hold with equality),
so the returned W satisfies the KKT conditions to rounding precision.
"""

import numpy as np
from scipy import optimize


def _constraint_matrices(x_BTD, z_BD, opt_B):
  x = np.asarray(x_BTD, np.float64)
  z = np.asarray(z_BD, np.float64)
  opt = np.asarray(opt_B)
  if x.ndim != 3 or z.shape != (x.shape[0], x.shape[2]) or opt.shape != (x.shape[0],):
    raise ValueError(f"need x (n, T, d), z (n, d), opt (n,); got {x.shape}, {z.shape}, {opt.shape}")
  n, t, _ = x.shape
  if np.any(opt < 0) or np.any(opt >= t):
    raise ValueError(f"opt indices must lie in [0, {t}), got {opt.tolist()}")
  rows = []
  for i in range(n):
    for j in range(t):
      if j != opt[i]:
        rows.append(np.outer(x[i, opt[i]] - x[i, j], z[i]).ravel())
  return np.stack(rows)


def attention_svm(x_BTD, z_BD, opt_B, *, tol=1e-10):
  """Solves Att-SVM for the given optimal-token indices.

  Args:
    x_BTD: (n, T, d) token matrices X_i.
    z_BD: (n, d) query vectors z_i (z_i = x_i1 for self-attention).
    opt_B: (n,) index of the selected token in each sample.
    tol: dual gradient tolerance.

  Returns:
    A dict with "w" (d, d), "dual" (n (T - 1),), "margins" (n, T - 1) = <A_it, W>, and
    "support" (n, T - 1) booleans marking the active constraints.

  Raises:
    ValueError: on inconsistent shapes or when the constraints cannot be met (some A_it = 0).
  """
  a_KM = _constraint_matrices(x_BTD, z_BD, opt_B)
  if np.any(np.linalg.norm(a_KM, axis=1) == 0):
    raise ValueError("infeasible Att-SVM: a non-selected token equals the selected one")
  gram = a_KM @ a_KM.T
  res = optimize.minimize(lambda a: 0.5 * a @ gram @ a - a.sum(), np.zeros(len(gram)),
                          jac=lambda a: gram @ a - 1.0, method="L-BFGS-B",
                          bounds=[(0.0, None)] * len(gram),
                          options={"gtol": tol, "ftol": 1e-15, "maxiter": 10_000})
  dual = res.x
  active = dual > 1e-8 * max(dual.max(), 1.0)
  # Polish: on the active set the margins equal 1, a small linear system for the multipliers.
  polished = np.zeros_like(dual)
  polished[active] = np.linalg.lstsq(gram[np.ix_(active, active)], np.ones(active.sum()),
                                     rcond=None)[0]
  w = polished @ a_KM
  margins = a_KM @ w
  if np.all(polished >= 0) and margins.min() >= 1 - 1e-8:
    dual = polished
  else:
    w = dual @ a_KM
    margins = a_KM @ w
  if margins.min() < 1 - 1e-4:
    raise ValueError(f"Att-SVM solve failed to reach feasibility (min margin {margins.min():.3g})")
  n, t = np.asarray(x_BTD).shape[:2]
  d = np.asarray(x_BTD).shape[2]
  return {"w": w.reshape(d, d), "dual": dual, "margins": margins.reshape(n, t - 1),
          "support": (dual > 1e-8 * max(dual.max(), 1.0)).reshape(n, t - 1)}


def is_locally_optimal(x_BTD, opt_B, support_BS, scores_BT):
  """Tarzanagh et al.'s local optimality: each selected token outscores its support tokens.

  Args:
    x_BTD: (n, T, d) tokens (for the shapes only).
    opt_B: (n,) selected token indices.
    support_BS: (n, T - 1) active-constraint flags from `attention_svm`, over tokens t != opt_i.
    scores_BT: (n, T) token scores gamma_it = y_i v^T x_it.

  Returns:
    True when gamma_{i, opt_i} > gamma_{i, t} for every support token t.
  """
  n, t = np.asarray(x_BTD).shape[:2]
  scores = np.asarray(scores_BT)
  for i in range(n):
    others = [j for j in range(t) if j != opt_B[i]]
    for flag, j in zip(support_BS[i], others):
      if flag and scores[i, j] >= scores[i, opt_B[i]]:
        return False
  return True
