"""Crafter evaluation metrics: achievement success rates and the Crafter score (docs/algorithm.md section 8).

The Crafter score is the geometric mean of the success rates, shifted by one percent point:
``score = exp(mean_i ln(1 + s_i)) - 1`` over the 22 achievements, with ``s_i`` the percentage of
episodes in which achievement ``i`` was unlocked at least once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from deltairis.envs.crafter_python import crafter_achievements

NUM_ACHIEVEMENTS = 22


def crafter_score(success_rates_percent: Sequence[float] | Mapping[str, float] | np.ndarray) -> float:
    """``exp(mean ln(1 + s_i)) - 1`` over the success rates ``s_i`` in percent (0..100).

    Args:
        success_rates_percent: the 22 rates, as a sequence/array or a mapping achievement name -> rate.

    Raises:
        ValueError: when the number of rates is not 22 or a rate is outside [0, 100] or not finite.
    """
    if isinstance(success_rates_percent, Mapping):
        rates = np.asarray(list(success_rates_percent.values()), dtype=np.float64)
    else:
        rates = np.asarray(success_rates_percent, dtype=np.float64)
    if rates.shape != (NUM_ACHIEVEMENTS,):
        raise ValueError(f"success_rates_percent must hold {NUM_ACHIEVEMENTS} rates, got shape {rates.shape}")
    if not np.all(np.isfinite(rates)) or rates.min() < 0.0 or rates.max() > 100.0:
        raise ValueError("success_rates_percent must lie in [0, 100] (percent), got values outside")
    return float(np.exp(np.mean(np.log1p(rates))) - 1.0)


def achievement_success_rates(episode_achievements: Iterable[Mapping[str, int]]) -> dict[str, float]:
    """Percentage of episodes in which each achievement was unlocked at least once.

    Args:
        episode_achievements: one mapping per finished episode, achievement name -> count at the end of
            the episode (crafter's ``info["achievements"]`` from ``final_info``).

    Returns:
        ``{name: rate in percent}`` for the 22 achievements in crafter's order.

    Raises:
        ValueError: when no episode is given or an episode names an unknown achievement.
    """
    names = crafter_achievements()
    index = {name: k for k, name in enumerate(names)}
    unlocked = []
    for ep in episode_achievements:
        row = np.zeros(len(names), dtype=bool)
        for name, count in ep.items():
            if name not in index:
                raise ValueError(f"unknown Crafter achievement {name!r}")
            row[index[name]] = count > 0
        unlocked.append(row)
    if not unlocked:
        raise ValueError("episode_achievements is empty: need at least one finished episode")
    rates = 100.0 * np.mean(np.stack(unlocked), axis=0)
    return {name: float(rates[k]) for k, name in enumerate(names)}


def crafter_metrics(episode_achievements: Iterable[Mapping[str, int]]) -> dict[str, float]:
    """Success rates (keys ``achievement/<name>``) plus ``crafter_score``, ready to log."""
    rates = achievement_success_rates(episode_achievements)
    out = {f"achievement/{name}": rate for name, rate in rates.items()}
    out["crafter_score"] = crafter_score(rates)
    out["num_achievements_unlocked"] = float(sum(rate > 0 for rate in rates.values()))
    return out
