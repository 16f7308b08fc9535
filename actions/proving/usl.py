"""The Universal Scalability Law (Gunther): X(n) = λn / (1 + σ(n−1) + κn(n−1)), fitted with numpy only.

σ (contention) is the share of work that serialises; κ (coherency) is the cost of keeping n replicas in step,
which makes throughput *fall* past n* = sqrt((1−σ)/κ). E(n) = X(n)/(n·X(1)) is the scaling efficiency the
scorecard's "linear scaling" rule checks (≥ 0.8).

Fitting: n/X(n) = 1/λ + (σ/λ)(n−1) + (κ/λ)n(n−1) is linear in (1/λ, σ/λ, κ/λ), so an ordinary least-squares
solve gives a start; Gauss–Newton on the real residuals X − X̂ then refines it (the linear form over-weights
small throughputs). σ and κ are physical only when ≥ 0: a negative estimate is clamped to 0 and the others
refitted, which is the constrained least-squares optimum for this tiny (≤ 3 parameter) problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

_GAUSS_NEWTON_ITERATIONS = 50
# κ below this is rounding noise of the fit (a perfectly linear series fits κ ≈ 1e-17, not 0): it would place the
# peak beyond ~30 000 replicas, which no measured run can support, so it counts as "no retrograde region".
KAPPA_TOLERANCE = 1e-9


@dataclass(frozen=True)
class UslFit:
    lam: float  # λ: throughput of one replica with no contention (req/s)
    sigma: float  # σ: contention, 0..1
    kappa: float  # κ: coherency delay, ≥ 0
    r2: float  # coefficient of determination of the fit on X
    points: int  # how many (n, X) points went into the fit

    @property
    def peak_n(self) -> float | None:
        """n* = sqrt((1−σ)/κ): the replica count of maximum throughput; None when κ ≈ 0 (no retrograde region)."""
        if self.kappa <= KAPPA_TOLERANCE or self.sigma >= 1:
            return None
        return math.sqrt((1 - self.sigma) / self.kappa)

    def predict(self, n: float) -> float:
        return usl_throughput(n, self.lam, self.sigma, self.kappa)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak_n": self.peak_n}


def usl_throughput(n: float | np.ndarray, lam: float, sigma: float, kappa: float) -> Any:
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def efficiency(throughputs: dict[int, float]) -> dict[int, float]:
    """E(n) = X(n) / (n·X(1)) for every measured n; empty when X(1) is missing or 0."""
    base = throughputs.get(1)
    if not base:
        return {}
    return {n: x / (n * base) for n, x in sorted(throughputs.items())}


def _linear_start(n: np.ndarray, x: np.ndarray, free: tuple[bool, bool]) -> np.ndarray:
    """(λ, σ, κ) from least squares on n/X, with σ and/or κ pinned at 0 when not free."""
    columns = [np.ones_like(n)]
    if free[0]:
        columns.append(n - 1)
    if free[1]:
        columns.append(n * (n - 1))
    design = np.column_stack(columns)
    coef, *_ = np.linalg.lstsq(design, n / x, rcond=None)
    a = coef[0] if coef[0] > 0 else float(np.mean(n / x))
    sigma = coef[1] / a if free[0] else 0.0
    kappa = coef[-1] / a if free[1] else 0.0
    return np.array([1 / a, sigma, kappa], dtype=float)


def _refine(n: np.ndarray, x: np.ndarray, params: np.ndarray, free: tuple[bool, bool]) -> np.ndarray:
    """Gauss–Newton on X − X̂ over the free parameters; stops when the step is tiny or the error grows."""
    mask = np.array([True, free[0], free[1]])
    current = params.copy()

    def sse(p: np.ndarray) -> float:
        return float(np.sum((x - usl_throughput(n, *p)) ** 2))

    best = sse(current)
    for _ in range(_GAUSS_NEWTON_ITERATIONS):
        lam, sigma, kappa = current
        denominator = 1 + sigma * (n - 1) + kappa * n * (n - 1)
        predicted = lam * n / denominator
        jacobian = np.column_stack([
            n / denominator,
            -lam * n * (n - 1) / denominator**2,
            -lam * n * n * (n - 1) / denominator**2,
        ])[:, mask]
        step, *_ = np.linalg.lstsq(jacobian, x - predicted, rcond=None)
        candidate = current.copy()
        candidate[mask] += step
        candidate[1:] = np.maximum(candidate[1:], 0.0)
        error = sse(candidate)
        if not np.all(np.isfinite(candidate)) or candidate[0] <= 0 or error > best:
            break
        improvement = best - error
        current, best = candidate, error
        if improvement <= 1e-12 * max(best, 1.0):
            break
    return current


def fit_usl(ns: Sequence[float], throughputs: Sequence[float]) -> UslFit:
    """Least-squares USL fit; needs ≥ 2 points with X > 0 (σ and κ both free only from 3 points)."""
    n = np.asarray(ns, dtype=float)
    x = np.asarray(throughputs, dtype=float)
    if n.shape != x.shape:
        raise ValueError("ns and throughputs must have the same length")
    keep = np.isfinite(x) & (x > 0) & (n >= 1)
    n, x = n[keep], x[keep]
    if len(n) < 2 or len(set(n.tolist())) < 2:
        raise ValueError("the USL fit needs at least 2 distinct replica counts with a throughput > 0")
    candidates: list[tuple[bool, bool]] = [(True, True)] if len(set(n.tolist())) >= 3 else []
    candidates += [(True, False), (False, True), (False, False)]
    best_params: np.ndarray | None = None
    best_error = math.inf
    for free in candidates:
        params = _refine(n, x, _linear_start(n, x, free), free)
        if params[0] <= 0 or np.any(params[1:] < 0) or not np.all(np.isfinite(params)):
            continue
        error = float(np.sum((x - usl_throughput(n, *params)) ** 2))
        # prefer the model with more freedom unless a simpler one fits as well (ties within rounding)
        if best_params is None or error < best_error - 1e-9 * max(best_error, 1.0):
            best_params, best_error = params, error
    if best_params is None:  # cannot happen with the (False, False) candidate, kept for type checkers
        raise ValueError("USL fit failed")
    total = float(np.sum((x - x.mean()) ** 2))
    r2 = 1 - best_error / total if total > 0 else 1.0
    lam, sigma, kappa = (float(v) for v in best_params)
    return UslFit(lam=lam, sigma=min(sigma, 1.0), kappa=kappa, r2=r2, points=len(n))
