"""The shared tests of rlhf_lens.nulls: calibrated under their null, right on known cases."""

import numpy as np
import pytest

from rlhf_lens import nulls


def test_rank_p_value_is_exact_and_has_its_floor():
    assert nulls.rank_p_value(5.0, [1, 2, 3]) == pytest.approx(0.25) == nulls.p_floor(3)
    assert nulls.rank_p_value(2.0, [1, 2, 3]) == pytest.approx(3 / 4)
    assert nulls.rank_p_value(0.0, [1, 2, 3], side="less") == pytest.approx(0.25)
    assert nulls.rank_p_value(1.0, []) == 1.0
    # uniform under exchangeability: the observed value is one more draw from the null
    rng = np.random.default_rng(0)
    p = np.array([nulls.rank_p_value(x[0], x[1:]) for x in rng.normal(size=(4000, 20))])
    assert abs((p <= 0.05).mean() - 0.05) < 0.012
    assert p.min() == pytest.approx(0.05)


@pytest.mark.parametrize("units", [10, 24])
def test_paired_sign_flip_keeps_its_level_and_finds_a_shift(units):
    rng = np.random.default_rng(1)
    null = [nulls.paired_p_value(rng.standard_t(3, size=units), n_flips=999, seed=i) for i in range(600)]
    rate = float(np.mean(np.array(null) <= 0.05))
    lo, hi = nulls.binomial_interval(int(round(rate * 600)), 600)
    assert lo <= 0.05 <= hi + 0.01, rate
    shifted = [nulls.paired_p_value(rng.normal(1.0, 1.0, size=units), n_flips=999, seed=i) for i in range(100)]
    assert np.mean(np.array(shifted) <= 0.05) > 0.8  # a t-test has ~0.9 power at 10 units
    assert nulls.paired_p_value(np.zeros(units)) == 1.0
    assert nulls.paired_p_value([-1.0] * units, side="less") <= 0.001 + 1 / 1000


def test_sign_flip_z_per_column():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 500))
    x[:, 0] += 0.5  # one column shifted
    z, p = nulls.sign_flip_z(x)
    assert p[0] < 1e-6 and z[0] > 0
    assert abs((p[1:] <= 0.05).mean() - 0.05) < 0.03
    z0, p0 = nulls.sign_flip_z(np.zeros((5, 2)))
    assert list(p0) == [1.0, 1.0] and list(z0) == [0.0, 0.0]


def test_holm_and_benjamini_hochberg_on_known_cases():
    p = [0.01, 0.04, 0.03, 0.005]
    assert nulls.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert nulls.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert len(nulls.holm([])) == 0 and len(nulls.benjamini_hochberg([])) == 0
    assert nulls.holm([0.9, 0.8]).max() <= 1.0


def test_binomial_interval_matches_clopper_pearson():
    lo, hi = nulls.binomial_interval(0, 40)
    assert lo == 0.0 and hi == pytest.approx(0.0881, abs=1e-3)  # the "rule of three" region
    lo, hi = nulls.binomial_interval(2, 40)
    assert lo == pytest.approx(0.0061, abs=1e-3) and hi == pytest.approx(0.1692, abs=1e-3)
    assert nulls.binomial_interval(0, 0) == (0.0, 1.0)


def test_prediction_p_value_keeps_its_level_without_a_floor():
    rng = np.random.default_rng(3)
    draws = rng.normal(size=(4000, 10))  # one "observed" + 9 null draws of the same law
    p = np.array([nulls.prediction_p_value(x[0], x[1:]) for x in draws])
    assert abs((p <= 0.05).mean() - 0.05) < 0.012
    two = np.array([nulls.prediction_p_value(x[0], x[1:], "two-sided") for x in draws])
    assert abs((two <= 0.05).mean() - 0.05) < 0.012
    # far out, p goes well below the rank floor of 9 draws (0.1)
    assert nulls.prediction_p_value(10.0, draws[0, 1:]) < 1e-3 < nulls.p_floor(9)
    # no spread: the exact rank p-value
    assert nulls.prediction_p_value(2.0, [1.0, 1.0, 1.0]) == nulls.rank_p_value(2.0, [1.0, 1.0, 1.0])
