"""Aggregate statistics over runs, as defined in Agarwal et al. 2021, "Deep Reinforcement Learning at the
Edge of the Statistical Precipice" (the ``rliable`` library), in NumPy.

Scores are given per task (an Atari game): ``games[g]`` is the 1-D array of the run (seed) scores of
task ``g``; tasks may have different numbers of runs. With ``m_g`` the mean of task ``g``'s runs and
``x`` all run scores pooled:

- **mean**: the mean over tasks of ``m_g``;
- **median**: the median over tasks of ``m_g``;
- **IQM** (interquartile mean): the mean of the middle 50% of ``x`` (``scipy.stats.trim_mean(x, 0.25)``:
  ``floor(0.25 n)`` scores cut at each end of the ``n`` sorted scores);
- **optimality gap**: the mean of ``max(0, gamma - x)``, threshold ``gamma = 1`` (human level);
- **performance profile** at ``tau``: the mean over tasks of the fraction of task ``g``'s runs scoring
  above ``tau``.

Confidence intervals use the stratified bootstrap: each resample draws, for every task independently
(tasks are the strata), as many runs as it has, with replacement, from its runs; the statistic is
computed on each resample and the interval is the percentile interval (``np.percentile`` at
``(1 - confidence) / 2`` and ``(1 + confidence) / 2``). Draws follow a fixed order so that a seed gives
the same intervals everywhere: ``rng = np.random.default_rng(seed)``, then for each task in order one
``rng.integers(0, n_g, size=(reps, n_g))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: The aggregate statistics, in report order.
AGGREGATES = ("mean", "median", "iqm", "optimality_gap")
#: Fewest bootstrap resamples accepted.
MIN_REPS = 2000

Games = Sequence[np.ndarray]


def _as_games(games: Sequence[Sequence[float] | np.ndarray]) -> list[np.ndarray]:
    out = []
    for k, g in enumerate(games):
        a = np.asarray(g, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"task {k}: need a non-empty 1-D list of run scores, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"task {k}: run scores must be finite, got {a.tolist()}")
        out.append(a)
    if not out:
        raise ValueError("no task scores given")
    return out


# -- statistics of a batch of score sets: every function takes per-task arrays (..., n_g) -----------------
def _task_means(games: Games) -> np.ndarray:
    return np.stack([g.mean(axis=-1) for g in games], axis=-1)  # (..., G)


def mean_of_means(games: Games) -> np.ndarray:
    return _task_means(games).mean(axis=-1)


def median_of_means(games: Games) -> np.ndarray:
    return np.median(_task_means(games), axis=-1)


def interquartile_mean(games: Games) -> np.ndarray:
    pooled = np.sort(np.concatenate(list(games), axis=-1), axis=-1)
    n = pooled.shape[-1]
    cut = int(0.25 * n)
    return pooled[..., cut : n - cut].mean(axis=-1)


def optimality_gap(games: Games, gamma: float = 1.0) -> np.ndarray:
    pooled = np.concatenate(list(games), axis=-1)
    return np.maximum(0.0, gamma - pooled).mean(axis=-1)


STATISTICS: dict[str, Callable[[Games], np.ndarray]] = {
    "mean": mean_of_means,
    "median": median_of_means,
    "iqm": interquartile_mean,
    "optimality_gap": optimality_gap,
}


def performance_profile(games: Games, taus: np.ndarray) -> np.ndarray:
    """Fraction of runs above each ``tau``, averaged over tasks: shape (..., len(taus))."""
    taus = np.asarray(taus, dtype=np.float64)
    per_task = [(g[..., None, :] > taus[:, None]).mean(axis=-1) for g in games]  # (..., T) each
    return np.mean(np.stack(per_task, axis=0), axis=0)


# -- bootstrap ----------------------------------------------------------------------------------------------
def stratified_resamples(games: Games, reps: int, seed: int) -> list[np.ndarray]:
    """``reps`` stratified bootstrap resamples: per task an array (reps, n_g) (the draw order of the module
    docstring)."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    rng = np.random.default_rng(seed)
    out = []
    for g in games:
        idx = rng.integers(0, g.shape[0], size=(reps, g.shape[0]))
        out.append(g[idx])
    return out


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    lo, hi = np.percentile(samples, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)], axis=0)
    return float(lo), float(hi)


def aggregate_with_ci(
    games: Sequence[Sequence[float] | np.ndarray],
    *,
    reps: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
    statistics: Sequence[str] = AGGREGATES,
) -> dict[str, dict[str, object]]:
    """``{name: {"value": point estimate, "ci": [lo, hi]}}`` for each statistic (the module docstring).

    Raises:
        ValueError: on empty or non-finite scores, ``reps < MIN_REPS`` or an unknown statistic.
    """
    if reps < MIN_REPS:
        raise ValueError(f"at least {MIN_REPS} bootstrap resamples are needed, got {reps}")
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown:
        raise ValueError(f"unknown statistics {unknown}; known: {list(STATISTICS)}")
    tasks = _as_games(games)
    resampled = stratified_resamples(tasks, reps, seed)
    out: dict[str, dict[str, object]] = {}
    for name in statistics:
        fn = STATISTICS[name]
        lo, hi = percentile_interval(fn(resampled), confidence)
        out[name] = {"value": float(fn(tasks)), "ci": [lo, hi]}
    return out


def profile_with_ci(
    games: Sequence[Sequence[float] | np.ndarray],
    taus: np.ndarray,
    *,
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, list[float]]:
    """The performance profile at ``taus`` with a pointwise stratified-bootstrap band."""
    tasks = _as_games(games)
    resampled = stratified_resamples(tasks, reps, seed)
    boot = performance_profile(resampled, taus)  # (reps, T)
    lo, hi = np.percentile(boot, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)], axis=0)
    return {
        "tau": [float(t) for t in taus],
        "value": [float(v) for v in performance_profile(tasks, taus)],
        "lo": [float(v) for v in lo],
        "hi": [float(v) for v in hi],
    }


def mean_with_ci(
    values: Sequence[float] | np.ndarray, *, reps: int = 10000, seed: int = 0, confidence: float = 0.95
) -> dict[str, object]:
    """The mean of ``values`` (e.g. the seeds of one game) and its percentile-bootstrap interval (resampling
    the values); ``ci`` is None for a single value (no spread to resample)."""
    [a] = _as_games([values])
    if a.size < 2:
        return {"value": float(a.mean()), "ci": None, "n": int(a.size)}
    [boot] = stratified_resamples([a], reps, seed)
    lo, hi = percentile_interval(boot.mean(axis=-1), confidence)
    return {"value": float(a.mean()), "ci": [lo, hi], "n": int(a.size)}


__all__ = [
    "AGGREGATES",
    "MIN_REPS",
    "STATISTICS",
    "aggregate_with_ci",
    "interquartile_mean",
    "mean_of_means",
    "mean_with_ci",
    "median_of_means",
    "optimality_gap",
    "percentile_interval",
    "performance_profile",
    "profile_with_ci",
    "stratified_resamples",
]
