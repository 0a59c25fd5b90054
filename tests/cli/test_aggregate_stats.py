"""Golden tests of the aggregate statistics (Agarwal et al. 2021 definitions): hand-computed values, and
the vectorised stratified bootstrap against a slow, obviously correct loop over the same draws."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from deltairis.cli.aggregate_stats import (
    MIN_REPS,
    aggregate_with_ci,
    interquartile_mean,
    mean_of_means,
    mean_with_ci,
    median_of_means,
    optimality_gap,
    performance_profile,
    profile_with_ci,
)

GAMES = [[0.0, 1.0], [2.0, 4.0], [10.0, 10.0]]


def _arrays(games):
    return [np.asarray(g, dtype=np.float64) for g in games]


def test_hand_computed_point_estimates() -> None:
    g = _arrays(GAMES)  # task means 0.5, 3, 10; pooled sorted 0 1 2 4 10 10
    assert mean_of_means(g) == pytest.approx(13.5 / 3)
    assert median_of_means(g) == pytest.approx(3.0)
    assert interquartile_mean(g) == pytest.approx((1 + 2 + 4 + 10) / 4)  # 6 scores: 1 cut at each end
    assert optimality_gap(g) == pytest.approx(1.0 / 6)  # only the 0 is below 1, by 1
    assert interquartile_mean(_arrays([[1, 2, 3, 4, 5, 6, 7, 8]])) == pytest.approx(4.5)  # 3 4 5 6
    assert interquartile_mean(_arrays([[1, 2], [3, 100, 4]])) == pytest.approx(3.0)  # 5 scores: 2 3 4
    assert optimality_gap(_arrays([[0.25, 2.0], [0.5, 1.0]])) == pytest.approx((0.75 + 0.5) / 4)
    prof = performance_profile(_arrays([[0.0, 2.0], [1.0, 1.0, 3.0]]), np.array([0.5, 1.0, 2.5]))
    np.testing.assert_allclose(prof, [(1 / 2 + 1) / 2, (1 / 2 + 1 / 3) / 2, (0 + 1 / 3) / 2])


def _slow_percentile(values: list[float], q: float) -> float:
    """np.percentile's default (linear) rule, by hand."""
    s = sorted(values)
    pos = q / 100.0 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _slow_aggregates(games: list[list[float]], reps: int, seed: int) -> dict[str, tuple[float, float]]:
    """One resample at a time in plain Python, from the documented draws."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(g), size=(reps, len(g))) for g in games]
    samples: dict[str, list[float]] = {"mean": [], "median": [], "iqm": [], "optimality_gap": []}
    for r in range(reps):
        resample = [[g[int(i)] for i in draws[k][r]] for k, g in enumerate(games)]
        means = [statistics.fmean(x) for x in resample]
        pooled = sorted(v for x in resample for v in x)
        cut = len(pooled) // 4
        samples["mean"].append(statistics.fmean(means))
        samples["median"].append(statistics.median(means))
        samples["iqm"].append(statistics.fmean(pooled[cut : len(pooled) - cut]))
        samples["optimality_gap"].append(statistics.fmean(max(0.0, 1.0 - v) for v in pooled))
    return {k: (_slow_percentile(v, 2.5), _slow_percentile(v, 97.5)) for k, v in samples.items()}


def test_bootstrap_intervals_match_a_slow_loop_over_the_same_draws() -> None:
    games = [[0.1, 0.9, 0.4], [1.5, 0.2, 3.0, 0.7], [0.0, 2.2], [5.0]]  # unequal seed counts
    got = aggregate_with_ci(games, reps=MIN_REPS, seed=123)
    want = _slow_aggregates(games, MIN_REPS, 123)
    for name, (lo, hi) in want.items():
        assert got[name]["ci"] == pytest.approx([lo, hi], abs=1e-12), name
        assert got[name]["ci"][0] <= got[name]["value"] <= got[name]["ci"][1]
    assert got["mean"]["value"] == pytest.approx(np.mean([np.mean(g) for g in games]))
    again = aggregate_with_ci(games, reps=MIN_REPS, seed=123)
    assert again == got  # a seed gives the same intervals
    other = aggregate_with_ci(games, reps=MIN_REPS, seed=124)
    assert other["iqm"]["ci"] != got["iqm"]["ci"]


def test_bootstrap_degenerate_and_normal_cases() -> None:
    same = aggregate_with_ci([[2.0, 2.0, 2.0], [0.5, 0.5]], reps=MIN_REPS, seed=0)
    assert same["mean"] == {"value": 1.25, "ci": [1.25, 1.25]}  # no spread inside any stratum
    assert same["optimality_gap"]["ci"] == [0.2, 0.2]  # (0.5 + 0.5) / 5
    rng = np.random.default_rng(5)
    x = rng.normal(10.0, 2.0, size=400)
    est = mean_with_ci(x, reps=MIN_REPS, seed=1)
    half = 1.96 * x.std() / math.sqrt(x.size)  # the normal approximation of the mean's interval
    assert est["ci"][0] == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert est["ci"][1] == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert mean_with_ci([3.0]) == {"value": 3.0, "ci": None, "n": 1}  # one seed: no interval


def test_profile_band_and_input_errors() -> None:
    taus = np.linspace(0.0, 3.0, 7)
    prof = profile_with_ci(GAMES, taus, reps=500, seed=0)
    assert prof["value"] == pytest.approx(performance_profile(_arrays(GAMES), taus).tolist())
    assert all(lo <= v <= hi for lo, v, hi in zip(prof["lo"], prof["value"], prof["hi"]))
    with pytest.raises(ValueError, match=f"at least {MIN_REPS}"):
        aggregate_with_ci(GAMES, reps=100)
    with pytest.raises(ValueError, match="task 1"):
        aggregate_with_ci([[1.0], []])
    with pytest.raises(ValueError, match="finite"):
        aggregate_with_ci([[1.0, float("nan")]])
    with pytest.raises(ValueError, match="unknown statistics"):
        aggregate_with_ci(GAMES, statistics=["mode"])
