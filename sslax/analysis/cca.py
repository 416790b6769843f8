"""Projection-weighted canonical correlation (PWCCA), in float64 numpy.

CCA (Hotelling 1936) finds directions w_x, w_y in two views X [N, A] and Y [N, B] of the
same N items whose projections X w_x and Y w_y correlate most; the k-th pair is the most
correlated one uncorrelated with the first k - 1. With the views centred and whitened
(C_xx^-1/2, C_yy^-1/2), the canonical correlations are the singular values of
C_xx^-1/2 C_xy C_yy^-1/2 and the directions come from its singular vectors.

The layer-wise analysis of Pasad et al. (2021, "Layer-wise analysis of a self-supervised
speech representation model"; 2023, "Comparative layer-wise analysis of self-supervised
speech models") summarises the K = min(A, B) correlations as PWCCA (Morcos et al. 2018,
"Insights on representational similarity in neural networks with canonical
correlation"): a mean weighted by how much of a view each canonical variate accounts
for, alpha_i = sum_j |<h_i, x_j>| over the view's centred columns x_j, with h_i the
orthonormalised canonical variates (google/svcca `pwcca.compute_pwcca`; the view weighted
is the one with fewer dimensions, as there and in Pasad's `cca_core.py`).

Choices here (`pwcca`):
- Fitted on one set of items and scored on another (Pasad et al. fit on 80 % of the
  items and report the held-out score): the correlations and weights are those of the
  held-out items projected on the fitted directions, so a direction that only fits noise
  scores near 0 instead of near 1.
- Each view is first reduced by SVD to the components that carry `keep_variance` of its
  fitted variance (SVCCA, Raghu et al. 2017; 1.0 keeps its numerical rank: one-hot labels
  lose only their one degenerate direction). The weights are computed in the view's own
  coordinates.
- Ridge regularisation: C_xx + epsilon * mean(diag C_xx) * I (Pasad et al. pick epsilon
  in 1e-10 ... 1e-5 on held-out items; a fixed, scale-free epsilon is used here).
"""

import dataclasses

import numpy as np

DEFAULT_EPSILON = 1e-6
RANK_TOLERANCE = 1e-10  # singular values below this share of the largest are rank loss


@dataclasses.dataclass(frozen=True)
class Fit:
  """Canonical directions fitted on paired items.

  Attributes:
    mean_x: f64[A] the fitted items' mean of view X (mean_y: f64[B], of Y).
    proj_x: f64[A, K] maps centred X to its K canonical variates (proj_y: f64[B, K]).
    correlations: f64[K] canonical correlations on the fitted items, descending.
    dims_x, dims_y: the views' dimensions after reduction (K is the smaller).
  """

  mean_x: np.ndarray
  mean_y: np.ndarray
  proj_x: np.ndarray
  proj_y: np.ndarray
  correlations: np.ndarray
  dims_x: int
  dims_y: int


def _reduce(centred_NxA: np.ndarray, keep_variance: float) -> np.ndarray:
  """f64[A, R]: orthonormal principal directions keeping `keep_variance` of the variance
  (all with non-negligible singular values when 1.0)."""
  _, s, vt = np.linalg.svd(centred_NxA, full_matrices=False)
  if not len(s) or s[0] == 0:
    raise ValueError("a CCA view has no variance over the fitted items")
  rank = int(np.sum(s > RANK_TOLERANCE * s[0]))
  share = np.cumsum(s[:rank] ** 2) / np.sum(s[:rank] ** 2)
  keep = rank if keep_variance >= 1.0 else int(np.searchsorted(share, keep_variance) + 1)
  return vt[: min(keep, rank)].T


def _inverse_sqrt(cov_RxR: np.ndarray, epsilon: float) -> np.ndarray:
  ridge = epsilon * np.mean(np.diag(cov_RxR))
  values, vectors = np.linalg.eigh(cov_RxR + ridge * np.eye(len(cov_RxR)))
  return (vectors / np.sqrt(np.maximum(values, np.finfo(np.float64).tiny))) @ vectors.T


def fit(
  x_NxA: np.ndarray,
  y_NxB: np.ndarray,
  *,
  keep_variance_x: float = 1.0,
  keep_variance_y: float = 1.0,
  epsilon: float = DEFAULT_EPSILON,
) -> Fit:
  """Canonical directions of views X and Y over the same N items (rows).

  Each view is reduced to its principal directions keeping `keep_variance_*` of its
  variance (module docstring), then whitened with ridge `epsilon`.

  Raises:
    ValueError: the views disagree on N, or one has no variance.
  """
  x_NxA = np.asarray(x_NxA, np.float64)
  y_NxB = np.asarray(y_NxB, np.float64)
  if x_NxA.ndim != 2 or y_NxB.ndim != 2 or len(x_NxA) != len(y_NxB):
    raise ValueError(f"CCA views must be [N, dims] with one N: got {x_NxA.shape}, {y_NxB.shape}")
  mean_x, mean_y = x_NxA.mean(0), y_NxB.mean(0)
  xc, yc = x_NxA - mean_x, y_NxB - mean_y
  basis_x, basis_y = _reduce(xc, keep_variance_x), _reduce(yc, keep_variance_y)
  xr, yr = xc @ basis_x, yc @ basis_y
  n = len(xr)
  white_x = _inverse_sqrt(xr.T @ xr / n, epsilon)
  white_y = _inverse_sqrt(yr.T @ yr / n, epsilon)
  u, s, vt = np.linalg.svd(white_x @ (xr.T @ yr / n) @ white_y, full_matrices=False)
  return Fit(
    mean_x=mean_x,
    mean_y=mean_y,
    proj_x=basis_x @ white_x @ u,
    proj_y=basis_y @ white_y @ vt.T,
    correlations=s,
    dims_x=basis_x.shape[1],
    dims_y=basis_y.shape[1],
  )


def _column_correlations(a_NxK: np.ndarray, b_NxK: np.ndarray) -> np.ndarray:
  """Pearson correlation of each column pair; 0 where a column is constant."""
  a = a_NxK - a_NxK.mean(0)
  b = b_NxK - b_NxK.mean(0)
  norms = np.sqrt(np.sum(a * a, 0) * np.sum(b * b, 0))
  return np.where(norms > 0, np.sum(a * b, 0) / np.where(norms > 0, norms, 1.0), 0.0)


def projection_weights(variates_NxK: np.ndarray, view_NxA: np.ndarray) -> np.ndarray:
  """f64[K] Morcos et al.'s weights: alpha_i = sum_j |<h_i, x_j>|, normalised to sum 1,
  with h_i the orthonormalised (QR) centred variates and x_j the view's centred columns."""
  variates = variates_NxK - variates_NxK.mean(0)
  q, _ = np.linalg.qr(variates)
  alpha = np.sum(np.abs(q.T @ (view_NxA - view_NxA.mean(0))), axis=1)
  return alpha / np.sum(alpha)


def pwcca(
  x_fit: np.ndarray,
  y_fit: np.ndarray,
  x_eval: np.ndarray,
  y_eval: np.ndarray,
  *,
  keep_variance_x: float = 1.0,
  keep_variance_y: float = 1.0,
  epsilon: float = DEFAULT_EPSILON,
) -> dict:
  """PWCCA of views X and Y fitted on (x_fit, y_fit) and scored on (x_eval, y_eval).

  Args:
    x_fit, y_fit: f[N, A] and f[N, B], the items the directions are fitted on.
    x_eval, y_eval: f[M, A] and f[M, B], the items scored (the fitted ones again for an
      in-sample score).
    keep_variance_x, keep_variance_y, epsilon: as `fit`.

  Returns:
    {'pwcca': the weighted mean of the held-out correlations, 'mean': their plain mean,
     'correlations': f64[K] held-out, 'fit_correlations': f64[K], 'weights': f64[K],
     'weighted_view': 'x' or 'y' (the one with fewer reduced dimensions, x on a tie),
     'dims_x', 'dims_y': reduced dimensions}.
  """
  fitted = fit(
    x_fit, y_fit, keep_variance_x=keep_variance_x, keep_variance_y=keep_variance_y, epsilon=epsilon
  )
  x_eval = np.asarray(x_eval, np.float64)
  y_eval = np.asarray(y_eval, np.float64)
  variates_x = (x_eval - fitted.mean_x) @ fitted.proj_x
  variates_y = (y_eval - fitted.mean_y) @ fitted.proj_y
  correlations = _column_correlations(variates_x, variates_y)
  view = "x" if fitted.dims_x <= fitted.dims_y else "y"
  weights = projection_weights(
    variates_x if view == "x" else variates_y, x_eval if view == "x" else y_eval
  )
  return dict(
    pwcca=float(np.sum(weights * correlations)),
    mean=float(np.mean(correlations)),
    correlations=correlations,
    fit_correlations=fitted.correlations,
    weights=weights,
    weighted_view=view,
    dims_x=fitted.dims_x,
    dims_y=fitted.dims_y,
  )
