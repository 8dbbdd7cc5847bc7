"""The four sweeps of ``search_quality.py``, one function each; every one returns a sweep record.

A record: ``budget_s`` and ``clock`` (what the budget counts), ``trials`` as a list of
``{t, val, test, state}`` (``t``: seconds on that clock when the trial ended; ``state``: complete, pruned
or cut; ``test`` only for complete trials, never used for selection) and ``selected`` (the best-validation
complete trial's val and test accuracy).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import textbook_sweep as tb
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sweeper import api
from sweeper.study.spec import load_spec
from sweeper.training import objective as sweeper_objective
from sweeper.training.data import load_raw_splits
from sweeper.training.loss import evaluate
from sweeper.training.models import MLP
from sweeper.workers.population import PopulationRunner
from sweeper.workers.protocol import TrialProtocol

Record = dict[str, Any]


def selected(trials: list[Record]) -> Record | None:
    """The best-validation complete trial (the first one on ties), as Optuna's ``best_trial`` picks it."""
    done = [t for t in trials if t["state"] == "complete" and t["val"] is not None]
    return max(done, key=lambda t: t["val"]) if done else None


def warm_up() -> None:
    """Pay this process's one-time lazy imports (torch's optimizer machinery, Optuna's TPE) before any budget."""
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    for xb, yb in DataLoader(TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4):
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)


# --- (a) sweeper: its defaults, from a minimal study file --------------------------------------------------


def _higher_better(direction: str, value: float | None) -> float | None:
    """A trial's value as the records keep it, higher is better whatever the study's direction (val_loss: -loss)."""
    return value if value is None or direction == "maximize" else -value


@contextlib.contextmanager
def _record_sweeper_trials(trials: list[Record], clock: Callable[[], float]) -> Iterator[dict[str, Any]]:
    """Wrap sweeper's trial protocol to log each trial's end time and, when complete, its test accuracy (its
    trained network, or a population member's, taken at the trial's end).

    Yields ``{"excluded": CPU s of those test evaluations (not in the budget), "standardized": bool}``.
    """
    seen: dict[str, Any] = {"excluded": 0.0, "standardized": None, "data": None}
    nets: dict[int, Any] = {}  # trial number -> its trained network (one trial) or its weights (a member)
    call, init = sweeper_objective.Objective.__call__, PopulationRunner.__init__
    trained, trained_weights, finish = TrialProtocol.trained, TrialProtocol.trained_weights, TrialProtocol.finish

    def objective_call(self: Any, trial: optuna.Trial) -> float:
        seen["data"] = self.data
        return call(self, trial)

    def runner_init(self: Any, study: Any, data: Any, *args: Any, **kw: Any) -> None:
        seen["data"] = data
        init(self, study, data, *args, **kw)
        self.protocol.keep = self.protocol.keep or (lambda frozen, weights: None)  # so members' weights are taken

    def on_trained(self: Any, trial: optuna.Trial, model: Any) -> None:
        nets[trial.number] = model
        trained(self, trial, model)

    def on_weights(self: Any, number: int, weights: Any) -> None:
        nets.setdefault(number, weights)
        trained_weights(self, number, weights)

    def on_finish(self: Any, trial: optuna.Trial, state: Any, value: float | None = None, reason: Any = None) -> Any:
        data = seen["data"]
        seen["standardized"] = data.mean is not None
        net = nets.pop(trial.number, None)
        complete = state == optuna.trial.TrialState.COMPLETE
        test = None
        if net is not None and complete:
            start = time.process_time()
            model = net if isinstance(net, nn.Module) else _member_network(self.spec, data, net)
            test = evaluate(model, data.test)[1]
            seen["excluded"] += time.process_time() - start
        if complete or state == optuna.trial.TrialState.PRUNED:
            val = _higher_better(self.spec.direction, value) if complete else None
            trials.append({"t": clock() - seen["excluded"], "val": val, "test": test,
                           "state": "complete" if complete else "pruned"})  # fmt: skip
        return finish(self, trial, state, value, reason)

    patches = [
        (sweeper_objective.Objective, "__call__", objective_call), (PopulationRunner, "__init__", runner_init),
        (TrialProtocol, "trained", on_trained), (TrialProtocol, "trained_weights", on_weights),
        (TrialProtocol, "finish", on_finish),
    ]  # fmt: skip
    originals = [(cls, name, getattr(cls, name)) for cls, name, _ in patches]
    for cls, name, fn in patches:
        setattr(cls, name, fn)
    try:
        yield seen
    finally:
        for cls, name, fn in originals:
            setattr(cls, name, fn)


def _member_network(spec: Any, data: Any, weights: dict[str, Any]) -> Any:
    """A population member's MLP from its state dict (dropout rates do not matter in evaluation)."""
    bn = any(k.endswith("running_mean") for k in weights)
    net = MLP(data.in_features, data.num_classes, spec.network.hidden, (0.0,) * spec.network.n_dropout, bn,
              spec.network.activation)  # fmt: skip
    net.load_state_dict(weights)
    return net.to(data.train.x.device).eval()


def run_sweeper(study_file: Path, trials: int, workdir: Path, workers: int = 1) -> Record:
    """``sweeper.api.launch`` on the study file, one torch thread, no tracking; its CPU time is the budget.

    With ``workers > 1`` the trials run in worker processes: this process sees neither their CPU nor their test
    accuracy, so the trials are read back from the study (wall-clock end times, no per-trial test) and the
    budget column is wall seconds.
    """
    spec, url = load_spec(study_file).to_dict(), f"sqlite:///{workdir}/sweeper.db"
    records: list[Record] = []
    start, wall, began = time.process_time(), time.perf_counter(), datetime.datetime.now()
    with _record_sweeper_trials(records, lambda: time.process_time() - start) as seen:
        api.launch(study_file, trials=trials, storage=url, tracking="", score_test=False, threads=1, workers=workers)
    cpu, wall = time.process_time() - start - seen["excluded"], time.perf_counter() - wall
    name = spec["name"]
    if workers > 1:
        records = [
            {"t": (t.datetime_complete - began).total_seconds(), "val": t.value, "test": None,
             "state": "complete" if t.state == optuna.trial.TrialState.COMPLETE else "pruned"}
            for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
            if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL and t.datetime_complete
        ]  # fmt: skip
    api.score_best_on_test(name, tracking="", storage=url)  # retrains the best trial: not in the budget
    refit = api.refit(name, tracking="", storage=url)  # reported beside the selected trial: not in the budget
    rep = api.report(name, storage=url)
    assert rep.test is not None and refit is not None, f"sweeper did not score its best trial: {rep}"
    ours = selected(records)
    test = rep.test["test_accuracy"]
    if spec["train"]["population"] > 1 and ours is not None:
        test = ours["test"]  # the member network itself (a one-trial retrain would draw other dropout masks)
    return {
        "budget_s": cpu if workers == 1 else wall,
        "clock": "cpu" if workers == 1 else "wall",
        "wall_s": wall,
        "trials": records,
        "selected": {"val": _higher_better(spec["direction"], rep.best_value), "test": test, "trial": rep.best_trial},
        # (val: higher is better; a val_loss study's is -loss)
        "refit_test": refit["test_accuracy"],
        "per_trial_test_matches_final": ours is not None
        and ours["test"] is not None
        and abs(ours["test"] - rep.test["test_accuracy"]) < 1e-9,
        "defaults": {  # what the minimal study file resolved to, as this sweeper version fills it in
            **{k: spec.get(k) for k in ("sampler", "pruner", "warm_start")},
            "standardize": f"{spec['data'].get('standardize')} (applied: {seen['standardized']})",
        },
    }


# --- (b, c) textbook_sweep.py's loop on any task, with its sampler or random search -------------------------


def textbook_data(study_file: Path, scale: bool) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Sweeper's split rows for the study's seed, raw; ``scale``: StandardScaler fit on train, as users do."""
    spec = load_spec(study_file)
    raw = load_raw_splits(spec.data, spec.seed, spec.base_dir)
    splits = [raw.train, raw.val, raw.test]
    if scale:
        scaler = StandardScaler().fit(raw.train[0])
        splits = [(scaler.transform(x).astype(np.float32), y) for x, y in splits]
    a, b, c = (TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for x, y in splits)
    return a, b, c


def net_class(in_features: int, n_classes: int) -> type[nn.Module]:
    """textbook_sweep's ``Net`` (40 inputs, 10 classes) with this task's input and output widths."""

    class TaskNet(tb.Net):
        def __init__(self, p_input: float, p_hidden: list[float], batch_norm: bool) -> None:
            super().__init__(p_input, p_hidden, batch_norm)
            if (in_features, n_classes) != (40, 10):
                self.net[1] = nn.Linear(in_features, tb.HIDDEN[0])
                self.net[-1] = nn.Linear(tb.HIDDEN[-1], n_classes)

    return TaskNet


def shape(sets: tuple[TensorDataset, ...]) -> tuple[int, int]:
    """(input features, classes) of a task's splits."""
    return int(sets[0].tensors[0].shape[1]), int(max(int(s.tensors[1].max()) for s in sets) + 1)


@contextlib.contextmanager
def _textbook_for(task: dict[str, Any], method: str, trials: list[Record], clock: Callable[[], float]) -> Iterator:
    """Point textbook_sweep's globals at the task, swap in random search if asked, log each finished trial."""
    saved = {k: getattr(tb, k) for k in ("EPOCHS", "HIDDEN", "Net", "load_data")}
    tb.EPOCHS, tb.HIDDEN, tb.Net = task["epochs"], tuple(task["hidden"]), net_class(*task["shape"])
    tb.load_data = lambda seed: textbook_data(task["study_file"], task["scale"])  # loaded (and charged) in the sweep
    create_study, optimize = optuna.create_study, optuna.Study.optimize

    def create(**kw: Any) -> optuna.Study:
        if method == "random":
            kw.update(sampler=optuna.samplers.RandomSampler(seed=task["seed"]), pruner=optuna.pruners.NopPruner())
        return create_study(**kw)

    def log(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        cut = t.user_attrs.get("cut", False)
        state = "complete" if t.state == optuna.trial.TrialState.COMPLETE else "cut" if cut else "pruned"
        trials.append({"t": clock(), "val": t.value, "test": t.user_attrs.get("test_accuracy"), "state": state})

    def optimize_logged(self: optuna.Study, func: Any, **kw: Any) -> None:
        optimize(self, func, callbacks=[*(kw.pop("callbacks", None) or []), log], **kw)

    optuna.create_study, optuna.Study.optimize = create, optimize_logged  # type: ignore[method-assign]
    try:
        yield
    finally:
        optuna.create_study, optuna.Study.optimize = create_study, optimize  # type: ignore[method-assign]
        for k, v in saved.items():
            setattr(tb, k, v)


def run_textbook(task: dict[str, Any], method: str, budget: float) -> Record:
    """textbook_sweep's loop (TPE + median pruner, or random search without pruning) until ``budget`` CPU s."""
    records: list[Record] = []
    start, wall = time.process_time(), time.perf_counter()
    clock = lambda: time.process_time() - start  # noqa: E731
    with _textbook_for(task, method, records, clock):
        tb.textbook_sweep(task["seed"], lambda: clock() >= budget)
    best = selected(records)
    return {
        "budget_s": budget,
        "clock": "cpu",
        "used_s": clock(),
        "wall_s": time.perf_counter() - wall,
        "trials": records,
        "selected": None if best is None else {"val": best["val"], "test": best["test"]},
    }


# --- (d) Ray Tune: ASHA + OptunaSearch (TPE), the same space, a wall-clock budget ---------------------------


def ray_space(trial: optuna.Trial, n_hidden: int) -> None:
    """textbook_sweep's space, define-by-run (max-norm conditional on its switch, as there)."""
    trial.suggest_float("dropout_input", 0.0, 0.2)
    for i in range(n_hidden):
        trial.suggest_float(f"dropout_hidden_{i + 1}", 0.2, 0.5)
    trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    trial.suggest_float("momentum", 0.9, 0.99)
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    if trial.suggest_categorical("use_max_norm", [0, 1]):
        trial.suggest_float("max_norm", 3, 5)
    trial.suggest_categorical("batch_norm", [0, 1])
    trial.suggest_float("lr_decay", 0.95, 1.0)


def ray_trainable(config: dict[str, Any], sets: tuple, epochs: int, hidden: tuple, seed: int) -> None:
    """One Ray Tune trial: textbook_sweep's training loop, val (and at the last epoch test) accuracy per epoch."""
    from ray import tune

    torch.set_num_threads(1)
    train_set, val_set, test_set = sets
    tb.HIDDEN = hidden
    torch.manual_seed(seed * 10_000 + zlib.crc32(repr(sorted(config.items())).encode()) % 10_000)
    p_hidden = [config[f"dropout_hidden_{i + 1}"] for i in range(len(hidden))]
    model = net_class(*shape(sets))(config["dropout_input"], p_hidden, bool(config["batch_norm"]))
    opt = torch.optim.SGD(
        model.parameters(), lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"]
    )
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config["lr_decay"])
    max_norm = config.get("max_norm") if config["use_max_norm"] else None
    loader, val_loader = DataLoader(train_set, tb.BATCH_SIZE, shuffle=True), DataLoader(val_set, tb.BATCH_SIZE)
    for epoch in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            if max_norm:
                with torch.no_grad():
                    for m in model.modules():
                        if isinstance(m, nn.Linear):
                            m.weight.copy_(torch.renorm(m.weight, 2, 0, max_norm))
        sched.step()
        last = epoch == epochs - 1
        test = tb.accuracy(model, DataLoader(test_set, tb.BATCH_SIZE)) if last else float("nan")
        val = tb.accuracy(model, val_loader)
        tune.report({"val_acc": val, "test_acc": test, "t_wall": time.time(), "cpu": time.process_time()})


def ray_init() -> None:
    """A new local Ray for this process (never a cluster someone else started), 1 CPU, quiet."""
    import ray

    if ray.is_initialized():
        return
    here = Path(__file__).resolve().parent
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])
    os.environ.update(OMP_NUM_THREADS="1", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", RAY_AIR_NEW_OUTPUT="0")
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ray.get(ray.remote(num_cpus=1)(_imported).remote())  # the cluster is up and has run torch once


def _imported() -> str:
    return torch.__version__


def run_ray(task: dict[str, Any], budget: float, workdir: Path) -> Record:
    """Ray Tune until ``budget`` seconds of wall clock (``time_budget_s``); trials one at a time, 1 CPU each."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    ray_init()
    sets = textbook_data(task["study_file"], task["scale"])
    hidden, epochs, seed = tuple(task["hidden"]), task["epochs"], task["seed"]
    trainable = tune.with_parameters(ray_trainable, sets=sets, epochs=epochs, hidden=hidden, seed=seed)
    tune_config = tune.TuneConfig(
        metric="val_acc",
        mode="max",
        search_alg=OptunaSearch(
            functools.partial(ray_space, n_hidden=len(hidden)), metric="val_acc", mode="max", seed=seed
        ),
        scheduler=ASHAScheduler(max_t=epochs, grace_period=1),
        num_samples=-1,
        max_concurrent_trials=1,
        time_budget_s=budget,
        reuse_actors=True,  # Ray's default (False) starts a worker per trial: ~5 s each on a busy 2-core machine
    )
    run_config = tune.RunConfig(storage_path=str(workdir / "ray"), verbose=0)
    tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), tune_config=tune_config, run_config=run_config)
    start = time.time()
    grid = tuner.fit()
    end = time.time()
    wall = end - start
    records = sorted((_ray_trial(r.metrics, epochs, start, end) for r in grid), key=lambda t: t["t"])
    used = max((r.metrics.get("cpu", 0.0) for r in grid if r.metrics), default=0.0)  # the trial actor's process
    if records and records[-1]["state"] == "pruned" and wall >= budget:
        records[-1]["state"] = "cut"  # the trial still running when the time budget stopped the sweep
    best = selected(records)
    return {
        "budget_s": budget,
        "clock": "wall",
        "used_s": used,
        "wall_s": wall,
        "trials": records,
        "selected": None if best is None else {"val": best["val"], "test": best["test"]},
    }


def _ray_trial(last: dict[str, Any] | None, epochs: int, start: float, end: float) -> Record:
    """A Ray trial from its last report (``Result.metrics``); one that never reported ends at ``end``."""
    if not last or "val_acc" not in last:
        return {"t": end - start, "val": None, "test": None, "state": "cut"}
    complete = int(last["training_iteration"]) >= epochs
    return {
        "t": float(last["t_wall"]) - start,
        "val": float(last["val_acc"]),
        "test": float(last["test_acc"]) if complete else None,
        "state": "complete" if complete else "pruned",
    }
