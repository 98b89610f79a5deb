"""Matrix Nuclear-Norm, Matrix Entropy and the exact nuclear norm of one hidden-state matrix.

Every function takes the *raw* last-layer hidden states ``R`` of one text, an array of shape
``(L, d)`` (``L`` tokens, hidden size ``d``), as a numpy array or a torch tensor (a tensor on a
GPU is computed there; a CPU tensor through numpy; torch is never imported for numpy input), and
applies the authors' normalisation itself:

1. subtract the mean over tokens (column-wise), then
2. scale every row (token) to unit L2 norm.

Call the result ``Z`` (``L x d``, unit rows). Then, following the authors' released code:

- Matrix Nuclear-Norm (Li, Xia, Chang, Wu 2024, arXiv:2410.10672): the L2 norms of the ``d``
  columns of ``Z``, sorted in descending order, the largest ``D = min(L, d)`` of them summed,
  divided by ``L``. ``O(L d)``.
- Matrix Entropy (Wei et al. 2024, arXiv:2401.17139): ``A = Z^T Z / L`` (``d x d``), eigenvalues
  ``lambda`` of ``A / trace(A)``, entropy ``-sum lambda log lambda`` (natural log, ``0 log 0 = 0``),
  divided by ``log d``. The non-zero eigenvalues of ``Z^T Z`` are those of the ``L x L`` Gram
  matrix ``Z Z^T``, so when ``L < d`` the value is computed from the Gram side in
  ``O(L^2 d + L^3)`` instead of the authors' ``O(L d^2 + d^3)``; the value is the same.
- Nuclear norm: the sum of the singular values of ``Z``, divided by ``L``; the quantity the
  Matrix Nuclear-Norm approximates. ``O(L d min(L, d) + min(L, d)^3)``, from the smaller Gram
  matrix like the entropy.

Lower values mean more compression for all three (the papers rank larger, better models lower).

Computation runs in float64 (or float32 when asked) whatever the input's dtype, so that a
bfloat16 model gives the same numbers as a float32 one up to the hidden states' own rounding.

Width and length confound the raw values: on an isotropic Gaussian matrix the Matrix
Nuclear-Norm is about ``sqrt(L/d)`` when ``L < d`` and the Matrix Entropy about
``log(min(L, d)) / log d``. :func:`gaussian_baseline` gives the same metric on a Gaussian matrix
of the same ``(L, d)`` so that models of different widths can be compared by the ratio.

>>> import numpy as np
>>> R = np.vstack([np.eye(4), -np.eye(4)])   # 8 tokens, d = 4, spread evenly
>>> round(matrix_entropy(R), 6), round(matrix_nuclear_norm(R), 6), round(nuclear_norm(R), 6)
(1.0, 0.707107, 0.707107)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from metricwise.errors import InvalidParameterError, UnknownNameError, did_you_mean

#: Metric names accepted by :func:`representation_metrics`, the corpus functions and the CLI.
METRIC_NAMES: tuple[str, ...] = ("mnn", "entropy", "nuclear")
#: Long names used in reports.
METRIC_TITLES: dict[str, str] = {
    "mnn": "Matrix Nuclear-Norm",
    "entropy": "Matrix Entropy",
    "nuclear": "nuclear norm (exact)",
}
_ALIASES: dict[str, str] = {
    "matrix_nuclear_norm": "mnn",
    "matrix_entropy": "entropy",
    "nuclear_norm": "nuclear",
}
_DTYPES = ("float64", "float32")
_SIDES = ("auto", "gram", "covariance")
#: Compute CPU torch tensors with torch instead of numpy (the tests use it to cover the torch path
#: without a GPU). By default CPU tensors go through numpy, GPU tensors stay on their device.
_TORCH_ON_CPU = False
_EPS64 = float(np.finfo(np.float64).eps)


# -- input handling ----------------------------------------------------------------------------
def is_torch_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, decided without importing torch."""
    cls = type(x)
    return cls.__module__.split(".")[0] == "torch" and cls.__name__ in {"Tensor", "Parameter"}


def _check_dtype(dtype: str, fn: str) -> str:
    if dtype not in _DTYPES:
        raise InvalidParameterError(
            f"The 'dtype' parameter of {fn} must be one of {list(_DTYPES)}. Got {dtype!r} instead."
        )
    return dtype


def _as_matrix(R: Any, fn: str, dtype: str) -> Any:
    """Validate ``R``; return a float64/float32 numpy array, or a torch tensor for non-CPU tensors."""
    _check_dtype(dtype, fn)
    if is_torch_tensor(R):
        import torch

        if R.is_complex() or R.dtype == torch.bool:
            raise InvalidParameterError(
                f"The 'R' parameter of {fn} must be a real-valued matrix. Got a tensor of dtype {R.dtype} instead."
            )
        X = R.detach().to(torch.float64 if dtype == "float64" else torch.float32)
        if X.device.type == "cpu" and not _TORCH_ON_CPU:
            R = X.numpy()  # CPU tensors take the numpy path below: one code path on CPU
        else:
            shape = tuple(X.shape)
            finite = bool(torch.isfinite(X).all()) if X.numel() else True
    if not is_torch_tensor(R):
        try:
            X = np.asarray(R)
        except Exception:  # ragged nested lists
            raise InvalidParameterError(
                f"The 'R' parameter of {fn} must be a 2-D array of shape (L, d). Got {type(R).__name__} that "
                "numpy cannot turn into a matrix instead."
            ) from None
        if (
            X.dtype == object
            or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool)
            or np.iscomplexobj(X)
        ):
            raise InvalidParameterError(
                f"The 'R' parameter of {fn} must be a real-valued matrix. Got an array of dtype {X.dtype} instead."
            )
        X = X.astype(np.float64 if dtype == "float64" else np.float32, copy=False)
        shape = X.shape
        finite = bool(np.isfinite(X).all())
    if len(shape) != 2:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} must be a 2-D matrix of shape (L tokens, d hidden units). "
            f"Got shape {shape} instead."
        )
    L, d = shape
    if L == 0:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} must have at least one row (token). Got an empty ({L}, {d}) "
            "matrix instead: the text produced no tokens."
        )
    if d == 0:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} must have at least one column. Got shape {shape} instead."
        )
    if L == 1:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} must have at least 2 rows (tokens). Got 1 instead: a single "
            "token is a zero row after subtracting the mean, and the metrics are undefined."
        )
    if not finite:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} must contain only finite values. Got NaN or infinity instead "
            "(a float16 model overflowing?)."
        )
    return X


def _normalize(X: Any, center: bool, fn: str) -> Any:
    """Centre over tokens (optionally) and scale rows to unit norm; ``X`` already validated."""
    if is_torch_tensor(X):
        import torch

        X = X - X.mean(dim=0, keepdim=True) if center else X.clone()
        norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        n_zero = int((norms == 0).sum())
    else:
        X = X - X.mean(axis=0, keepdims=True) if center else X.copy()
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        n_zero = int((norms == 0).sum())
    if n_zero:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} has {n_zero} row(s) equal to the mean over tokens (zero after "
            "centring), which cannot be scaled to unit norm. Got a degenerate matrix instead "
            "(identical hidden states for every token?)."
        )
    X /= norms  # X is a fresh array here, never the caller's
    return X


def normalize_representation(R: Any, *, center: bool = True, dtype: str = "float64") -> Any:
    """Return ``Z``: ``R`` minus its mean over tokens, with every row scaled to unit L2 norm.

    Parameters
    ----------
    R : array or torch.Tensor of shape (L, d)
        Hidden states of one text, ``L >= 2``.
    center : bool, default True
        Subtract the mean over tokens first (the authors' definition). ``False`` only scales
        rows, for matrices that are centred already.
    dtype : {"float64", "float32"}
        Precision of the result.

    Returns
    -------
    Z : numpy array, or a torch tensor on ``R``'s device when ``R`` is a GPU tensor; shape (L, d)
    """
    fn = "normalize_representation"
    return _normalize(_as_matrix(R, fn, dtype), center, fn)


# -- the metrics on a normalised matrix ----------------------------------------------------------
def _mnn_unit(Z: Any) -> float:
    L, d = Z.shape
    D = min(L, d)
    if is_torch_tensor(Z):
        import torch

        col = torch.linalg.vector_norm(Z, dim=0)
        top = col if d == D else torch.topk(col, D, sorted=False).values
        return float(top.sum().item()) / L
    col = np.linalg.norm(Z, axis=0)
    top = col if d == D else np.partition(col, d - D)[d - D :]
    return float(top.sum()) / L


def _entropy_unit(Z: Any, side: str) -> float:
    L, d = Z.shape
    use_gram = side == "gram" or (side == "auto" and d > L)
    if is_torch_tensor(Z):
        import torch

        M = (Z @ Z.T if use_gram else Z.T @ Z) / L
        eig = torch.linalg.eigvalsh(M)
        lam = eig / torch.diagonal(M).sum()
        lam = lam[lam > 0]
        h = float(-(lam * torch.log(lam)).sum().item())
    else:
        M = (Z @ Z.T if use_gram else Z.T @ Z) / L
        eig = np.linalg.eigvalsh(M)
        lam = eig / np.trace(M)
        lam = lam[lam > 0]
        h = float(-(lam * np.log(lam)).sum())
    return h / math.log(d)


def _nuclear_unit(Z: Any) -> float:
    """Sum of singular values / L.

    In float64, the square roots of the eigenvalues of the smaller of ``Z Z^T`` and ``Z^T Z``
    (a BLAS-3 product and a symmetric eigensolver: several times faster than an SVD).
    Eigenvalues below ``max(L, d) * eps`` times the largest are rounding noise of zero
    eigenvalues (centring always leaves one) and count as 0, so squaring loses only singular
    values below about ``sqrt(max(L, d) * eps * sigma_max^2)`` (``1e-6 sigma_max`` at
    ``d = 4096``), against a sum of order ``sqrt(L)``. In float32 that floor would be ``1e-2``,
    so float32 uses an SVD.
    """
    L, d = Z.shape
    torch_input = is_torch_tensor(Z)
    if torch_input:
        import torch

        if Z.dtype != torch.float64:
            return float(torch.linalg.svdvals(Z).sum().item()) / L
        G = Z @ Z.T if d >= L else Z.T @ Z
        eig = torch.linalg.eigvalsh(G)
        eig = torch.where(eig > eig.max() * max(L, d) * _EPS64, eig, torch.zeros_like(eig))
        return float(eig.sqrt().sum().item()) / L
    if Z.dtype != np.float64:
        return float(np.linalg.svd(Z, compute_uv=False).sum()) / L
    G = Z @ Z.T if d >= L else Z.T @ Z
    eig = np.linalg.eigvalsh(G)
    eig = np.where(
        eig > eig.max() * max(L, d) * _EPS64, eig, 0.0
    )  # rounding noise of zero eigenvalues
    return float(np.sqrt(eig).sum()) / L


# -- public metrics ------------------------------------------------------------------------------
def matrix_nuclear_norm(R: Any, *, center: bool = True, dtype: str = "float64") -> float:
    """Matrix Nuclear-Norm of one text's hidden states (Li et al. 2024); lower is better.

    ``Z`` = ``R`` centred over tokens with unit-norm rows; the ``min(L, d)`` largest column L2
    norms of ``Z``, summed, divided by ``L``: an ``O(L d)`` proxy of the nuclear norm ``||Z||_* / L``
    that needs no SVD. The two coincide when the columns of ``Z`` are orthogonal; when ``L >= d``
    the proxy is an upper bound (the nuclear norm is at most the sum of the column norms).

    Parameters
    ----------
    R : array or torch.Tensor of shape (L, d)
        Raw hidden states of one text (``L >= 2`` tokens, hidden size ``d``); any float dtype.
        GPU tensors are computed on their device, CPU tensors with numpy.
    center : bool, default True
        Subtract the token mean first, as the authors do. ``False`` skips it.
    dtype : {"float64", "float32"}
        Precision of the computation, independent of ``R``'s dtype.

    Returns
    -------
    float
        In ``(0, sqrt(min(L, d) / L)]``; dimensionless.

    Raises
    ------
    InvalidParameterError
        ``R`` is not 2-D, has fewer than 2 rows, contains NaN/inf, or has a row equal to the
        token mean.

    Examples
    --------
    >>> import numpy as np
    >>> R = np.outer(np.arange(1.0, 7.0), [1.0, 0.0, 0.0])   # rank 1: every token the same direction
    >>> round(matrix_nuclear_norm(R), 6) == round(1 / 6 ** 0.5, 6)
    True
    """
    fn = "matrix_nuclear_norm"
    return _mnn_unit(_normalize(_as_matrix(R, fn, dtype), center, fn))


def matrix_entropy(
    R: Any, *, center: bool = True, dtype: str = "float64", side: str = "auto"
) -> float:
    """Matrix Entropy of one text's hidden states (Wei et al. 2024), divided by ``log d``; lower is better.

    Eigenvalues ``lambda`` of ``A / trace(A)`` with ``A = Z^T Z / L`` (``Z``: ``R`` centred over
    tokens, unit-norm rows); returns ``-sum lambda log lambda / log d`` (natural logarithms,
    zero eigenvalues contribute 0).

    Parameters
    ----------
    R : array or torch.Tensor of shape (L, d)
        Raw hidden states of one text (``L >= 2``, ``d >= 2``).
    center : bool, default True
        Subtract the token mean first, as the authors do.
    dtype : {"float64", "float32"}
        Precision of the computation, independent of ``R``'s dtype.
    side : {"auto", "gram", "covariance"}
        ``"covariance"``: eigenvalues of the ``d x d`` matrix ``Z^T Z / L``, as the authors do,
        ``O(L d^2 + d^3)``. ``"gram"``: of the ``L x L`` matrix ``Z Z^T / L``, ``O(L^2 d + L^3)``;
        the non-zero eigenvalues, hence the value, are the same. ``"auto"`` picks the smaller.

    Returns
    -------
    float
        In ``[0, log(min(L - 1, d)) / log d]``: 0 when all tokens share one direction.

    Raises
    ------
    InvalidParameterError
        As :func:`matrix_nuclear_norm`, and for ``d < 2`` or an unknown ``side``.
    """
    fn = "matrix_entropy"
    if side not in _SIDES:
        raise InvalidParameterError(
            f"The 'side' parameter of {fn} must be one of {list(_SIDES)}. Got {side!r} instead."
        )
    X = _as_matrix(R, fn, dtype)
    if X.shape[1] < 2:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} must have at least 2 columns (the entropy is divided by log d). "
            f"Got shape {tuple(X.shape)} instead."
        )
    return _entropy_unit(_normalize(X, center, fn), side)


def nuclear_norm(R: Any, *, center: bool = True, dtype: str = "float64") -> float:
    """Exact nuclear norm of the normalised hidden states, ``||Z||_* / L``; lower is better.

    The sum of the singular values of ``Z`` (``R`` centred over tokens, unit-norm rows), divided
    by ``L``; what :func:`matrix_nuclear_norm` approximates. ``O(L d min(L, d) + min(L, d)^3)``:
    in float64 from the eigenvalues of the smaller Gram matrix (``Z Z^T`` or ``Z^T Z``), in
    float32 by an SVD without singular vectors.

    Parameters
    ----------
    R : array or torch.Tensor of shape (L, d)
        Raw hidden states of one text (``L >= 2``).
    center : bool, default True
        Subtract the token mean first.
    dtype : {"float64", "float32"}
        Precision of the computation.

    Returns
    -------
    float
        In ``[1 / sqrt(L), sqrt(min(L, d) / L)]``: the minimum for rank 1, the maximum when the
        rows are spread evenly over ``min(L, d)`` orthogonal directions.
    """
    fn = "nuclear_norm"
    return _nuclear_unit(_normalize(_as_matrix(R, fn, dtype), center, fn))


_FUNCTIONS: dict[str, Callable[..., float]] = {
    "mnn": matrix_nuclear_norm,
    "entropy": matrix_entropy,
    "nuclear": nuclear_norm,
}


def resolve_metric_names(
    metrics: str | Iterable[str], fn: str = "representation_metrics"
) -> tuple[str, ...]:
    """Turn ``"mnn,entropy"`` or ``["mnn", "matrix_entropy"]`` into canonical, de-duplicated names."""
    items = (
        [m.strip() for m in metrics.split(",")]
        if isinstance(metrics, str)
        else [str(m).strip() for m in metrics]
    )
    out: list[str] = []
    for item in items:
        if not item:
            continue
        name = _ALIASES.get(item.lower(), item.lower())
        if name not in _FUNCTIONS:
            raise UnknownNameError(
                f"The 'metrics' parameter of {fn} must name metrics among {list(METRIC_NAMES)}. Got {item!r} "
                f"instead.{did_you_mean(item, [*METRIC_NAMES, *_ALIASES])}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise InvalidParameterError(
            f"The 'metrics' parameter of {fn} must name at least one metric among {list(METRIC_NAMES)}. Got {metrics!r} instead."
        )
    return tuple(out)


def metric_function(name: str) -> Callable[..., float]:
    """The function computing metric ``name`` (``"mnn"``, ``"entropy"`` or ``"nuclear"``) from raw ``R``."""
    return _FUNCTIONS[resolve_metric_names([name], "metric_function")[0]]


def representation_metrics(
    R: Any,
    metrics: str | Iterable[str] = METRIC_NAMES,
    *,
    center: bool = True,
    dtype: str = "float64",
) -> dict[str, float]:
    """Several metrics of one matrix, normalising it once.

    Parameters
    ----------
    R : array or torch.Tensor of shape (L, d)
    metrics : str or iterable of str
        Names among ``"mnn"``, ``"entropy"``, ``"nuclear"`` (or a comma-separated string).

    Returns
    -------
    dict
        ``{name: value}`` in the order asked.
    """
    fn = "representation_metrics"
    names = resolve_metric_names(metrics, fn)
    X = _as_matrix(R, fn, dtype)
    if "entropy" in names and X.shape[1] < 2:
        raise InvalidParameterError(
            f"The 'R' parameter of {fn} must have at least 2 columns for the entropy. Got shape {tuple(X.shape)} instead."
        )
    Z = _normalize(X, center, fn)
    out: dict[str, float] = {}
    for name in names:
        if name == "mnn":
            out[name] = _mnn_unit(Z)
        elif name == "entropy":
            out[name] = _entropy_unit(Z, "auto")
        else:
            out[name] = _nuclear_unit(Z)
    return out


# -- the isotropic Gaussian baseline -------------------------------------------------------------
def gaussian_matrix(n_rows: int, n_cols: int, *, seed: int = 0, draw: int = 0) -> np.ndarray:
    """A standard Gaussian ``(n_rows, n_cols)`` float64 matrix, the same for the same arguments.

    The generator is seeded by ``(seed, n_rows, n_cols, draw)``, so every text of the same shape
    gets the same baseline whatever the order in which texts are processed.
    """
    rng = np.random.default_rng([int(seed), int(n_rows), int(n_cols), int(draw)])
    return rng.standard_normal((n_rows, n_cols))


def gaussian_baseline(
    metric: str, n_rows: int, n_cols: int, *, seed: int = 0, draws: int = 1, dtype: str = "float64"
) -> float:
    """The metric on an isotropic Gaussian matrix of shape ``(n_rows, n_cols)``: what no learning gives.

    Divide a text's raw score by this to remove the part of the score that only reflects its
    length ``L`` and the model's width ``d`` (Gaussian MNN is about ``sqrt(L / d)`` for ``L < d``,
    Gaussian entropy about ``log(min(L, d)) / log d``).

    Parameters
    ----------
    metric : {"mnn", "entropy", "nuclear"}
    n_rows, n_cols : int
        ``L >= 2`` and ``d >= 2``.
    seed : int
        Seed of the draws (see :func:`gaussian_matrix`).
    draws : int, default 1
        Number of Gaussian matrices averaged.
    dtype : {"float64", "float32"}

    Returns
    -------
    float
        Mean of the metric over ``draws`` matrices, computed on numpy (CPU).
    """
    fn = "gaussian_baseline"
    for pname, value, lo in (("n_rows", n_rows, 2), ("n_cols", n_cols, 2), ("draws", draws, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            raise InvalidParameterError(
                f"The '{pname}' parameter of {fn} must be an int >= {lo}. Got {value!r} instead."
            )
    f = metric_function(metric)
    return float(
        np.mean(
            [
                f(gaussian_matrix(n_rows, n_cols, seed=seed, draw=k), dtype=dtype)
                for k in range(draws)
            ]
        )
    )
