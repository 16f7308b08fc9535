"""USL fit on synthetic data with known σ, κ: the fit must recover them, with and without noise."""

from __future__ import annotations

import numpy as np
import pytest

from actions.proving.usl import UslFit, efficiency, fit_usl, usl_throughput

pytestmark = pytest.mark.fast  # no services: the fast tier


@pytest.mark.parametrize(("lam", "sigma", "kappa"), [(1000.0, 0.05, 0.01), (420.0, 0.2, 0.002), (80.0, 0.0, 0.03)])
def test_fit_recovers_known_parameters_exactly(lam: float, sigma: float, kappa: float) -> None:
    ns = np.arange(1, 11)
    fit = fit_usl(ns, usl_throughput(ns, lam, sigma, kappa))
    assert fit.lam == pytest.approx(lam, rel=1e-6)
    assert fit.sigma == pytest.approx(sigma, abs=1e-6)
    assert fit.kappa == pytest.approx(kappa, abs=1e-7)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.peak_n == pytest.approx(np.sqrt((1 - sigma) / kappa), rel=1e-4)


def test_fit_with_noise_stays_close() -> None:
    rng = np.random.default_rng(7)
    ns = np.repeat(np.arange(1, 9), 3)
    measured = usl_throughput(ns, 1000.0, 0.08, 0.005) * (1 + rng.normal(0, 0.01, ns.size))
    fit = fit_usl(ns, measured)
    assert fit.sigma == pytest.approx(0.08, abs=0.02)
    assert fit.kappa == pytest.approx(0.005, abs=0.002)
    assert fit.peak_n == pytest.approx(np.sqrt(0.92 / 0.005), rel=0.2)


def test_linear_scaling_has_no_peak_and_efficiency_one() -> None:
    fit = fit_usl([1, 2, 3, 4], [500, 1000, 1500, 2000])
    assert fit.sigma == pytest.approx(0, abs=1e-9) and fit.kappa == pytest.approx(0, abs=1e-9)
    assert fit.peak_n is None
    assert efficiency({1: 500, 2: 1000, 3: 1500}) == {1: 1.0, 2: 1.0, 3: 1.0}


def test_rounding_noise_kappa_is_no_peak() -> None:
    # a linear series fitted on another machine gave κ = 6e-18: that is no retrograde region, not a peak at 4e8
    assert UslFit(lam=500.0, sigma=0.0, kappa=6e-18, r2=1.0, points=4).peak_n is None
    assert UslFit(lam=500.0, sigma=0.0, kappa=0.01, r2=1.0, points=4).peak_n == pytest.approx(10.0)


def test_parameters_are_never_negative() -> None:
    # superlinear-looking noise would give σ < 0 unconstrained; physical σ, κ stay ≥ 0
    fit = fit_usl([1, 2, 3], [500, 900, 1000])
    assert fit.sigma >= 0 and fit.kappa >= 0
    assert fit.predict(2) == pytest.approx(900, rel=0.1)


def test_efficiency_and_bad_input() -> None:
    assert efficiency({1: 100.0, 2: 160.0, 4: 240.0}) == {1: 1.0, 2: 0.8, 4: 0.6}
    assert efficiency({2: 100.0}) == {}
    with pytest.raises(ValueError):
        fit_usl([1], [100])
    with pytest.raises(ValueError):
        fit_usl([1, 1], [100, 0])
