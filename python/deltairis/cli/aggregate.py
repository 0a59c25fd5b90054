"""``deltairis-eval --aggregate PATH...``: the statistics of many runs, next to published baselines.

PATHs are run folders, folders holding runs (a Hydra multirun folder: every job inside, found down to
:data:`MAX_DEPTH` levels), or score files (JSON ``{game: [per-run score, ...]}``, the layout of the
reference's ``results/atari.json``). Runs are grouped by environment:

- **Atari** (one game per run): each run's final score follows ``final_score`` (:data:`FINAL_SCORE_RULES`;
  by default the reference's protocol: the mean return of the test episodes of the run's last
  evaluation). Per game: the mean and a bootstrap 95% interval over runs. Over games: mean, median, IQM
  and optimality gap of the human-normalized score ``(score - random) / (human - random)``, each with a
  stratified bootstrap interval (:mod:`deltairis.cli.aggregate_stats`), and the performance profile.
- **Crafter** (the official protocol of the Crafter benchmark): per run, the success rate of each
  achievement over all its training episodes that ended within ``budget`` env steps, and the Crafter
  score ``exp(mean ln(1 + s)) - 1`` of those rates; the reported score is the mean over runs (seeds) with
  a bootstrap interval over runs, the success rates the mean over runs. The same over test episodes, and
  the score against env steps.
- **Other envs** (the toy env): the final score per run and per environment, no normalized statistics.

Published baselines (package data ``deltairis/envs/baselines/*.json``, each with its source) go through
the same statistics, on the games of the runs given, and are shown side by side.

Nothing is averaged silently: a run still training, a game with fewer runs than the others, a folder
that is not a run and a run without an evaluation are named in ``notes`` with what was done about them.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from deltairis.cli.aggregate_stats import aggregate_with_ci, mean_with_ci, profile_with_ci
from deltairis.cli.report import atari_game, atari_reference_scores
from deltairis.errors import ConfigError, ReportError, ResumeError

#: How deep below a given folder runs are looked for (a multirun folder's jobs are one level down).
MAX_DEPTH = 3
#: ``final-eval``: mean return of the test episodes of the run's last evaluation (the reference's
#: protocol). ``train-tail``: mean return of the training episodes that ended in the run's last
#: ``tail_steps`` env steps.
FINAL_SCORE_RULES = ("final-eval", "train-tail")
BASELINES = {"delta-iris": "delta_iris.json", "iris": "iris.json", "diamond": "diamond.json"}
DEFAULT_BUDGET = 1_000_000


@dataclass
class Settings:
    """The knobs of an aggregation (the ``deltairis-eval --aggregate`` options)."""

    seed: int = 0
    reps: int = 10000
    confidence: float = 0.95
    final_score: str = "final-eval"
    tail_steps: int = 10000
    budget: int = DEFAULT_BUDGET
    include_unfinished: bool = False
    min_seeds: int = 1
    baselines: tuple[str, ...] = tuple(BASELINES)
    label: str = "runs"

    def check(self) -> None:
        if self.final_score not in FINAL_SCORE_RULES:
            raise ReportError(f"--final-score must be one of {FINAL_SCORE_RULES}, got {self.final_score!r}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ReportError(f"unknown baselines {unknown}; known: {sorted(BASELINES)} (or none)")
        for name, value, least in (("--budget", self.budget, 1), ("--tail-steps", self.tail_steps, 1),
                                   ("--min-seeds", self.min_seeds, 1)):  # fmt: skip
            if value < least:
                raise ReportError(f"{name} must be >= {least}, got {value}")


@dataclass
class Run:
    """One run folder as read back (or one run of a score file: ``episodes`` empty, ``score`` given)."""

    name: str
    env: str
    game: str
    seed: int | None = None
    finished: bool = True
    #: a training process holds the run folder's lock right now
    in_use: bool = False
    epochs: tuple[int, int] = (0, 0)  # (done, planned)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    score: float | None = None


# -- baselines ------------------------------------------------------------------------------------------------
@cache
def load_baseline(name: str) -> dict[str, Any]:
    """A shipped baseline file (``method``, ``source`` with URL, commit and date, ``scores``)."""
    from importlib.resources import files

    if name not in BASELINES:
        raise ReportError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return json.loads(files("deltairis.envs").joinpath("baselines", BASELINES[name]).read_text())


# -- reading the inputs -------------------------------------------------------------------------------------
def is_run_folder(path: Path) -> bool:
    return (path / "config" / "trainer.yaml").is_file()


def _find_runs(path: Path, notes: list[str], depth: int = 0) -> list[Path]:
    if is_run_folder(path):
        return [path]
    if depth >= MAX_DEPTH:
        return []
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        runs = _find_runs(child, notes, depth + 1)
        if not runs and depth == 0:
            notes.append(f"{child}: not a run folder (no config/trainer.yaml): skipped")
        found += runs
    return found


def read_score_file(path: Path, notes: list[str] | None = None) -> list[Run]:
    """The runs of a score file ``{game: [score, ...]}`` (an Atari game name or env id per key). A key that
    is not an Atari 100k game is named in ``notes`` and skipped (an error without ``notes``)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a JSON score file ({exc})") from exc
    scores = doc.get("scores", doc) if isinstance(doc, dict) else None  # a shipped baseline file works too
    if not isinstance(scores, dict) or not scores:
        raise ReportError(f"{path}: expected a JSON object game -> list of per-run scores")
    runs = []
    for key, values in scores.items():
        if not isinstance(values, list) or not values:
            raise ReportError(f"{path}: {key!r} must map to a non-empty list of per-run scores")
        try:
            game = atari_game(key)
        except ReportError:
            if notes is None:
                raise
            notes.append(f"{path}: {key!r} is not an Atari 100k game (no random/human score): skipped")
            continue
        for k, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ReportError(f"{path}: {key!r} score {k} is not a finite number: {v!r}")
            runs.append(Run(name=f"{path}:{key}[{k}]", env="atari", game=game, seed=k, score=float(v)))
    return runs


def _locked(run_dir: Path) -> bool:
    """Whether a training process holds the run folder's lock (``RUN/.lock``, an exclusive ``flock``)."""
    import fcntl

    from deltairis.train.run_folder import LOCK_NAME

    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False  # no lock file: no process ever trained here, or it cannot be read
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # taken and dropped at once
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_run(path: Path) -> Run:
    """A run folder: its config (env, game, seed, planned epochs), metrics.jsonl and episodes.jsonl."""
    from deltairis.train.configuration import load_run_config
    from deltairis.train.episode_log import EPISODES_FILE, read_episodes

    cfg = load_run_config(path / "config" / "trainer.yaml")
    env = str(cfg.env.name)
    game = atari_game(str(cfg.env.train.id)) if env == "atari" else env
    metrics = []
    if (path / "metrics.jsonl").is_file():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line; the epochs before it are what counts
            if isinstance(record, dict) and "epoch" in record:
                metrics.append(record)
    done = max((int(r["epoch"]) for r in metrics), default=0)
    in_use = _locked(path)
    planned = int(cfg.common.epochs)
    seed = cfg.common.seed
    return Run(
        name=str(path),
        env=env,
        game=game,
        seed=None if seed is None else int(seed),
        finished=done >= planned and not in_use,
        in_use=in_use,
        epochs=(done, planned),
        episodes=read_episodes(path / EPISODES_FILE),
        metrics=metrics,
    )


def collect_inputs(paths: Sequence[Path], notes: list[str]) -> list[Run]:
    runs: list[Run] = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            runs += read_score_file(path, notes)
        elif path.is_dir():
            found = _find_runs(path, notes)
            if not found:
                notes.append(f"{path}: holds no run folder: skipped")
            for folder in found:
                try:
                    runs.append(read_run(folder))
                except (
                    ConfigError,
                    ResumeError,
                    ReportError,
                ) as exc:  # unreadable config or episodes, unknown game
                    notes.append(f"{folder}: cannot be read ({exc}): skipped")
        else:
            raise ReportError(f"{path}: no such file or folder")
    return runs


# -- final scores -----------------------------------------------------------------------------------------
def final_score(run: Run, settings: Settings) -> tuple[float | None, str]:
    """(the run's final score or None, how it was obtained)."""
    if run.score is not None:
        return run.score, "score file"
    if settings.final_score == "final-eval":
        test = [e for e in run.episodes if e["split"] == "test"]
        if test:
            last = max(e["epoch"] for e in test)
            returns = [e["return"] for e in test if e["epoch"] == last]
            return float(np.mean(returns)), f"mean of the {len(returns)} test episodes of epoch {last}"
        evals = [r for r in run.metrics if "test/return_mean" in r]
        if evals:
            last = evals[-1]
            return float(last["test/return_mean"]), f"metrics.jsonl test/return_mean of epoch {last['epoch']}"
        return None, "no evaluation (no test episodes in episodes.jsonl or metrics.jsonl)"
    train = [e for e in run.episodes if e["split"] == "train"]
    if not train:
        return None, "no training episode in episodes.jsonl"
    end = max(e["env_steps"] for e in train)
    tail = [e["return"] for e in train if e["env_steps"] > end - settings.tail_steps]
    return float(
        np.mean(tail)
    ), f"mean of the {len(tail)} training episodes of the last {settings.tail_steps} env steps"


def _select(runs: list[Run], settings: Settings, notes: list[str]) -> list[Run]:
    """The runs to aggregate: unfinished runs skipped unless asked (each one named in ``notes``)."""
    out = []
    for run in runs:
        if not run.finished:
            done, planned = run.epochs
            state = "in use by a training process" if run.in_use else "still training or stopped early"
            where = f"{run.name}: {state} (epoch {done} of {planned})"
            if run.env == "crafter" and _train_steps(run) > settings.budget:
                # the protocol reads the episodes within the budget only, and those are all there
                notes.append(f"{where}, past the budget of {settings.budget} env steps: used")
            elif settings.include_unfinished:
                notes.append(f"{where}: used (--include-unfinished)")
            else:
                notes.append(f"{where}: skipped")
                continue
        out.append(run)
    return out


def _train_steps(run: Run) -> int:
    """The env steps at the end of the run's last recorded training episode."""
    return max((e["env_steps"] for e in run.episodes if e["split"] == "train"), default=0)


# -- Atari and other envs -------------------------------------------------------------------------------------
def _hns(score: float, game: str) -> float:
    ref = atari_reference_scores()[game]
    return (score - ref["random"]) / (ref["human"] - ref["random"])


Scored = dict[str, list[tuple[Run, float, str]]]


def _scored(runs: list[Run], settings: Settings, notes: list[str]) -> Scored:
    """Each game's runs with their final score and how it was obtained (a run without one is skipped)."""
    by_game: Scored = defaultdict(list)
    for run in runs:
        score, how = final_score(run, settings)
        if score is None:
            notes.append(f"{run.name}: {how}: skipped")
            continue
        by_game[run.game].append((run, score, how))
    return dict(sorted(by_game.items()))


def _check_seeds(by_game: Scored, settings: Settings, notes: list[str]) -> None:
    most = max((len(v) for v in by_game.values()), default=0)
    for game in list(by_game):
        n = len(by_game[game])
        seeds = [r.seed for r, _, _ in by_game[game] if r.seed is not None and r.score is None]
        if len(set(seeds)) < len(seeds):
            notes.append(f"{game}: several runs share a seed ({sorted(seeds)}): all used")
        if n < settings.min_seeds:
            notes.append(f"{game}: {n} runs, fewer than --min-seeds {settings.min_seeds}: skipped")
            del by_game[game]
        elif n < most:
            notes.append(
                f"{game}: {n} runs where other games have up to {most}: used (its mean counts once among the "
                "games; its runs are pooled in the IQM, optimality gap and profile)"
            )


def _per_game(by_game: Scored, settings: Settings, atari: bool) -> dict[str, Any]:
    out = {}
    for game, triples in by_game.items():
        scores = [s for _, s, _ in triples]
        entry: dict[str, Any] = {
            "runs": [{"run": r.name, "seed": r.seed, "score": s, "rule": how} for r, s, how in triples],
            "scores": scores,
        }
        entry.update(
            mean_with_ci(scores, reps=settings.reps, seed=settings.seed, confidence=settings.confidence)
        )
        if atari:
            entry["hns"] = [_hns(s, game) for s in scores]
            entry["hns_mean"] = float(np.mean(entry["hns"]))
        out[game] = entry
    return out


def _hns_stats(games: Mapping[str, Sequence[float]], settings: Settings) -> dict[str, Any]:
    return aggregate_with_ci(
        [np.asarray(v, dtype=np.float64) for v in games.values()],
        reps=settings.reps,
        seed=settings.seed,
        confidence=settings.confidence,
    )


PROFILE_TAUS = np.linspace(0.0, 8.0, 81)


def atari_section(runs: list[Run], settings: Settings, notes: list[str]) -> dict[str, Any] | None:
    by_game = _scored(runs, settings, notes)
    _check_seeds(by_game, settings, notes)
    if not by_game:
        return None
    per_game = _per_game(by_game, settings, atari=True)
    hns = {g: e["hns"] for g, e in per_game.items()}
    section: dict[str, Any] = {"games": per_game, "hns": _hns_stats(hns, settings)}
    profile_reps = min(settings.reps, 2000)
    profiles = {
        settings.label: profile_with_ci(
            list(hns.values()), PROFILE_TAUS, reps=profile_reps, seed=settings.seed
        )
    }
    baselines: dict[str, Any] = {}
    for name in settings.baselines:
        doc = load_baseline(name)
        scores = {atari_game(k): v for k, v in doc["scores"].items()}
        missing = [g for g in per_game if g not in scores]
        if missing:
            notes.append(f"baseline {name}: no scores for {missing}: compared on the other games")
        games = [g for g in per_game if g in scores]
        if not games:
            continue
        b_hns = {g: [_hns(float(s), g) for s in scores[g]] for g in games}
        label = f"{doc['method']} (published)"
        baselines[name] = {
            "method": doc["method"],
            "label": label,
            "source": doc["source"],
            "games": {g: float(np.mean(scores[g])) for g in games},
            "hns": _hns_stats(b_hns, settings),
        }
        profiles[label] = profile_with_ci(
            list(b_hns.values()), PROFILE_TAUS, reps=profile_reps, seed=settings.seed
        )
    if len(per_game) < len(atari_reference_scores()):
        notes.append(
            f"Atari: {len(per_game)} of the {len(atari_reference_scores())} Atari 100k games; the aggregates "
            "(ours and the baselines') are over these games only"
        )
    section["baselines"] = baselines
    section["profiles"] = profiles
    return section


def other_section(runs: list[Run], settings: Settings, notes: list[str]) -> dict[str, Any] | None:
    by_game = _scored(runs, settings, notes)
    if not by_game:
        return None
    for game in by_game:
        notes.append(f"{game}: no random/human reference scores: raw returns only, no normalized statistics")
    return {"games": _per_game(by_game, settings, atari=False)}


# -- Crafter -------------------------------------------------------------------------------------------------
def crafter_rates(episodes: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Success rate (percent) of each of the 22 achievements over ``episodes`` (records with ``achievements``)."""
    from deltairis.envs.crafter_metrics import achievement_success_rates

    return achievement_success_rates([dict.fromkeys(e.get("achievements", []), 1) for e in episodes])


def _crafter_split(
    runs: list[Run], split: str, settings: Settings, notes: list[str]
) -> dict[str, Any] | None:
    from deltairis.envs.crafter_metrics import crafter_score

    per_run: dict[str, dict[str, Any]] = {}
    for run in runs:
        eps = [e for e in run.episodes if e["split"] == split and e["env_steps"] <= settings.budget]
        if not eps:
            notes.append(
                f"{run.name}: no {split} episode within {settings.budget} env steps: skipped for {split}"
            )
            continue
        if any("achievements" not in e for e in eps):
            notes.append(f"{run.name}: {split} episodes without achievements: skipped for {split}")
            continue
        rates = crafter_rates(eps)
        per_run[run.name] = {"episodes": len(eps), "score": crafter_score(rates), "success_rates": rates}
    if not per_run:
        return None
    scores = [r["score"] for r in per_run.values()]
    names = list(next(iter(per_run.values()))["success_rates"])
    mean_rates = {n: float(np.mean([r["success_rates"][n] for r in per_run.values()])) for n in names}
    est = mean_with_ci(scores, reps=settings.reps, seed=settings.seed, confidence=settings.confidence)
    return {
        "score": {"value": est["value"], "ci": est["ci"]},
        "success_rates": mean_rates,
        "runs": per_run,
    }


def crafter_curve(runs: list[Run], budget: int, points: int = 20) -> dict[str, Any]:
    """The Crafter score of each run over its training episodes up to each of ``points`` budgets."""
    from deltairis.envs.crafter_metrics import crafter_score

    xs = [round(budget * (k + 1) / points) for k in range(points)]
    curves: dict[str, list[float | None]] = {}
    for run in runs:
        eps = [e for e in run.episodes if e["split"] == "train" and "achievements" in e]
        ys: list[float | None] = []
        for x in xs:
            upto = [e for e in eps if e["env_steps"] <= x]
            ys.append(crafter_score(crafter_rates(upto)) if upto else None)
        curves[run.name] = ys
    return {"env_steps": xs, "runs": curves}


def crafter_section(runs: list[Run], settings: Settings, notes: list[str]) -> dict[str, Any] | None:
    for run in runs:
        reached = _train_steps(run)
        if reached < settings.budget and run.finished:
            notes.append(
                f"{run.name}: its last training episode ended at {reached} env steps, before the budget of "
                f"{settings.budget}: its episodes are used"
            )
    train = _crafter_split(runs, "train", settings, notes)
    if train is None:
        return None
    section = dict(train)
    section["budget"] = settings.budget
    section["protocol"] = (
        f"success rates over all training episodes that ended within {settings.budget} env steps, per run; "
        "score exp(mean ln(1 + s)) - 1 per run; mean and bootstrap interval over runs"
    )
    if len(section["runs"]) < 2:
        notes.append("Crafter: a single run: its score has no interval over runs")
    section["test"] = _crafter_split(runs, "test", settings, notes)
    section["curve"] = crafter_curve(runs, settings.budget)
    return section


# -- everything ---------------------------------------------------------------------------------------------
def aggregate(paths: Sequence[Path], settings: Settings) -> dict[str, Any]:
    """The aggregate of ``paths`` (see the module docstring) as a JSON-ready dict."""
    settings.check()
    notes: list[str] = []
    runs = _select(collect_inputs(paths, notes), settings, notes)
    by_env: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_env[run.env].append(run)
    out: dict[str, Any] = {
        "settings": {
            "seed": settings.seed,
            "bootstrap_resamples": settings.reps,
            "confidence": settings.confidence,
            "final_score": settings.final_score,
            "tail_steps": settings.tail_steps,
            "budget": settings.budget,
            "baselines": list(settings.baselines),
            "label": settings.label,
        },
        "inputs": [str(p) for p in paths],
        "notes": notes,
    }
    if by_env.get("atari"):
        atari = atari_section(by_env.pop("atari"), settings, notes)
        if atari is not None:
            out["atari"] = atari
            out["hns"] = atari["hns"]
    if by_env.get("crafter"):
        crafter = crafter_section(by_env.pop("crafter"), settings, notes)
        if crafter is not None:
            out["crafter"] = crafter
    others = {}
    for env, env_runs in sorted(by_env.items()):
        section = other_section(env_runs, settings, notes)
        if section is not None:
            others[env] = section
    if others:
        out["other"] = others
    if not any(k in out for k in ("atari", "crafter", "other")):
        raise ReportError("nothing to aggregate: " + ("; ".join(notes) if notes else "no run or score given"))
    return out


__all__ = [
    "BASELINES",
    "DEFAULT_BUDGET",
    "FINAL_SCORE_RULES",
    "Run",
    "Settings",
    "aggregate",
    "atari_section",
    "collect_inputs",
    "crafter_curve",
    "crafter_rates",
    "crafter_section",
    "final_score",
    "is_run_folder",
    "load_baseline",
    "read_run",
    "read_score_file",
]
