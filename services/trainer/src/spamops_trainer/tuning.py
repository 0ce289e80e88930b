"""Hyper-parameter search: XGBoost (hist) tuned by Ray Tune with Optuna (TPE) and ASHA.

Each trial boosts in chunks of ``report_every`` rounds and reports the F1 on
the validation split after each chunk, so ASHA can stop bad trials early.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import f1_score, log_loss

logger = logging.getLogger(__name__)

SEARCH_SPACE_BOUNDS: dict[str, tuple[float, float]] = {
    "learning_rate": (0.02, 0.3),
    "max_depth": (3, 10),
    "subsample": (0.6, 1.0),
    "colsample_bytree": (0.3, 1.0),
    "min_child_weight": (0.5, 10.0),
    "scale_pos_weight": (0.5, 4.0),
}

# A configuration that scored well on every split of the corpus (issue 15: mean F1
# 0.990, worst 0.986 over 5 stratified splits, fixed, no search). The search evaluates it
# first, and it is always a finalist of the cross-validated choice
# (training.cross_validate): on a 726-row validation split the best of 20 trials is
# often a lucky one (the tuned models scored mean 0.988, worst 0.981 on the same splits).
REFERENCE_POINT: dict[str, Any] = {
    "learning_rate": 0.1,
    "max_depth": 8,
    "n_estimators": 300,
    "subsample": 0.9,
    "colsample_bytree": 0.5,
    "min_child_weight": 1.0,
    "scale_pos_weight": 1.0,
}


@dataclass(frozen=True)
class SearchConfig:
    """How hard to search."""

    num_samples: int = 20
    max_concurrent_trials: int = 2
    time_budget_s: float = 600.0
    report_every: int = 25
    max_estimators: int = 600
    grace_reports: int = 2
    seed: int = 42
    ray_address: str | None = None
    ray_num_cpus: int = 2
    # Keep the in-process Ray node between trainings (the next one starts faster), or
    # stop it after each search: idle, its daemons took ~5% of a core from serving.
    ray_keep_alive: bool = False
    # Evaluate REFERENCE_POINT first (and keep it a finalist).
    reference_point: bool = True


@dataclass
class TrialResult:
    """One finished (or early-stopped) trial."""

    params: dict[str, Any]
    val_f1: float
    rounds: int
    stopped_early: bool
    val_logloss: float = float("inf")


@dataclass
class SearchResult:
    """The best parameters and every trial, for the MLflow child runs."""

    best_params: dict[str, Any]
    best_val_f1: float
    trials: list[TrialResult] = field(default_factory=list)
    seconds: float = 0.0


def booster_params(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """XGBoost training parameters from a search point (n_estimators excluded)."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "nthread": 1,  # one core per trial: trials run side by side
        "seed": seed,
        "learning_rate": float(params["learning_rate"]),
        "max_depth": int(params["max_depth"]),
        "subsample": float(params["subsample"]),
        "colsample_bytree": float(params["colsample_bytree"]),
        "min_child_weight": float(params["min_child_weight"]),
        "scale_pos_weight": float(params["scale_pos_weight"]),
    }


def _trial(config: dict[str, Any], data: dict[str, np.ndarray]) -> None:
    from ray import tune

    dtrain = xgb.DMatrix(data["x_train"], label=data["y_train"])
    dval = xgb.DMatrix(data["x_val"])
    y_val = data["y_val"]
    params = booster_params(config, int(config["seed"]))
    total = int(config["n_estimators"])
    step = int(config["report_every"])
    booster: xgb.Booster | None = None
    done = 0
    while done < total:
        rounds = min(step, total - done)
        booster = xgb.train(params, dtrain, num_boost_round=rounds, xgb_model=booster)
        done += rounds
        probabilities = booster.predict(dval)
        tune.report(
            {
                "val_f1": float(f1_score(y_val, probabilities >= 0.5)),
                # Breaks F1 ties (a small validation split has few distinct F1 values).
                "val_logloss": float(log_loss(y_val, probabilities, labels=[0, 1])),
                "rounds": done,
            }
        )


def _progress_callback(on_trial_done: Callable[[int, int], None] | None, total: int) -> Any:
    """A Ray Tune callback counting finished trials (run by Tune's driver, in this process)."""
    from ray.tune import Callback

    class _Progress(Callback):  # type: ignore[misc]
        done = 0

        def _finished(self) -> None:
            self.done += 1
            if on_trial_done is not None:
                try:
                    on_trial_done(self.done, total)
                except Exception:  # progress is cosmetic: never fail a search for it
                    logger.debug("progress callback failed", exc_info=True)

        def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self._finished()

        def on_trial_error(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
            self._finished()

    return _Progress()


def start_ray(config: SearchConfig, attempts: int = 3) -> bool:
    """Connect to ``RAY_ADDRESS`` or start Ray in-process, if not done yet.

    Returns whether this call started it (False: it was running already).
    A local Ray node must register within a fixed 30 s; on a loaded machine it
    sometimes does not ("timed out during startup"), so the start is retried.
    """
    import ray

    if ray.is_initialized():
        return False
    for attempt in range(1, attempts + 1):
        try:
            if config.ray_address:
                ray.init(address=config.ray_address, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=config.ray_num_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            return True
        except Exception as exc:
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise
            logger.warning("Ray did not start (attempt %d/%d): %s", attempt, attempts, exc)
            ray.shutdown()
            time.sleep(2.0 * attempt)
    raise AssertionError("not reached: the last attempt returns or raises")


def search(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: SearchConfig,
    on_trial_done: Callable[[int, int], None] | None = None,
) -> SearchResult:
    """Run the Ray Tune search; objective: F1 on the validation split (maximised).

    ``on_trial_done(done, total)`` is called in this process as trials finish
    (completed, stopped early by ASHA, or failed): the trainer shows progress with it.
    An in-process Ray started here is stopped afterwards unless ``ray_keep_alive``;
    Tune's folder is removed either way.
    """
    started = time.perf_counter()
    ray_started_here = start_ray(config)
    storage = tempfile.mkdtemp(prefix="spamops-tune-")
    try:
        trials = _run_search(x_train, y_train, x_val, y_val, config, storage, on_trial_done)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if ray_started_here and not config.ray_keep_alive and not config.ray_address:
            import ray

            ray.shutdown()
    if not trials:
        raise RuntimeError("the search produced no trial result")
    best = ranked(trials)[0]
    seconds = time.perf_counter() - started
    logger.info(
        "search finished",
        extra={"trials": len(trials), "best_val_f1": best.val_f1, "seconds": round(seconds, 1)},
    )
    return SearchResult(
        best_params=best.params, best_val_f1=best.val_f1, trials=trials, seconds=seconds
    )


def reference_point(config: SearchConfig) -> dict[str, Any]:
    """REFERENCE_POINT inside this search's space (its rounds at most ``max_estimators``)."""
    rounds = min(int(REFERENCE_POINT["n_estimators"]), config.max_estimators)
    rounds = max(config.report_every * 2, rounds - rounds % config.report_every)
    return {**REFERENCE_POINT, "n_estimators": rounds}


def is_reference(params: dict[str, Any]) -> bool:
    """Whether a trial's parameters are REFERENCE_POINT (its rounds may differ)."""
    return all(
        params.get(name) == value
        for name, value in REFERENCE_POINT.items()
        if name != "n_estimators"
    )


def ranked(trials: list[TrialResult]) -> list[TrialResult]:
    """Best first: highest validation F1, ties to the lower log loss, then more rounds.

    Not to the fewest rounds, which picked a 25-round model of near-0.5 probabilities
    on one split of issue 15.
    """
    return sorted(
        trials, key=lambda t: (t.val_f1, -t.val_logloss, t.params["n_estimators"]), reverse=True
    )


def _run_search(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: SearchConfig,
    storage: str,
    on_trial_done: Callable[[int, int], None] | None,
) -> list[TrialResult]:
    """The Tune run itself (Ray started), its trials read back before ``storage`` goes."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    lo = SEARCH_SPACE_BOUNDS
    space = {
        "learning_rate": tune.loguniform(*lo["learning_rate"]),
        "max_depth": tune.randint(int(lo["max_depth"][0]), int(lo["max_depth"][1]) + 1),
        "n_estimators": tune.qrandint(
            config.report_every * 2, config.max_estimators, config.report_every
        ),
        "subsample": tune.uniform(*lo["subsample"]),
        "colsample_bytree": tune.uniform(*lo["colsample_bytree"]),
        "min_child_weight": tune.loguniform(*lo["min_child_weight"]),
        "scale_pos_weight": tune.uniform(*lo["scale_pos_weight"]),
        "seed": config.seed,
        "report_every": config.report_every,
    }
    searcher = ConcurrencyLimiter(
        OptunaSearch(
            seed=config.seed,
            points_to_evaluate=[reference_point(config)] if config.reference_point else None,
        ),
        max_concurrent=config.max_concurrent_trials,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=max(1, config.max_estimators // config.report_every),
        grace_period=config.grace_reports,
        reduction_factor=3,
    )
    data = {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, data=data), {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="val_f1",
            mode="max",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.num_samples,
            time_budget_s=config.time_budget_s,
        ),
        run_config=tune.RunConfig(
            storage_path=storage,
            name="search",
            verbose=0,
            callbacks=[_progress_callback(on_trial_done, config.num_samples)],
        ),
    )
    grid = tuner.fit()
    trials: list[TrialResult] = []
    for index in range(len(grid)):
        result = grid[index]
        config_used = result.config or {}
        if result.metrics is None or "val_f1" not in result.metrics:
            continue
        params = {k: v for k, v in config_used.items() if k not in {"seed", "report_every"}}
        rounds = int(result.metrics.get("rounds", 0))
        # The best F1 the trial reached, at the rounds it was reached with.
        history = result.metrics_dataframe
        if is_reference(params) and history is not None and len(history):
            # The reference is a configuration measured at its full rounds: no checkpoint
            # picked on validation.
            last = history.iloc[-1]
            f1, rounds_at_best = float(last["val_f1"]), int(last["rounds"])
            loss = float(last.get("val_logloss", np.inf))
        elif history is not None and len(history):
            # The best F1 the trial reached; among equal F1s the lowest log loss.
            losses = history.get("val_logloss", pd.Series(np.inf, index=history.index))
            order = np.lexsort((losses.to_numpy(dtype=float), -history["val_f1"].to_numpy()))
            best_row = history.iloc[int(order[0])]
            f1, rounds_at_best = float(best_row["val_f1"]), int(best_row["rounds"])
            loss = float(losses.iloc[int(order[0])])
        else:
            f1, rounds_at_best = float(result.metrics["val_f1"]), rounds
            loss = float(result.metrics.get("val_logloss", np.inf))
        params["n_estimators"] = rounds_at_best
        trials.append(
            TrialResult(
                params=params,
                val_f1=f1,
                val_logloss=loss,
                rounds=rounds,
                stopped_early=rounds < int(config_used.get("n_estimators", rounds)),
            )
        )
    return trials
