"""A study's stored record: the one module that knows what sweeper keeps in Optuna's ``user_attrs``.

Study level: the study file (spec), the trial budget, the MLflow parent run id, the best trial's
test score. Trial level: where it ran (host, worker, device, node), its learning rate, and why it
ended. Everything else reads and writes these through the named accessors here, never by key.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.errors import StudyError
from sweeper.study import optuna_reads as reads
from sweeper.study.lock import db_now
from sweeper.study.recipes import literature_points
from sweeper.study.spec import StudySpec, parse_spec
from sweeper.study.storage import make_storage
from sweeper.study.strategy import make_pruner, make_sampler, sampler_seed
from sweeper.study.urls import mask_url

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials that count toward the budget

_SPEC = "sweeper.spec"
_BUDGET = "sweeper.budget"
_PARENT_RUN = "sweeper.mlflow_parent_run"
_RESULTS = {"test": "sweeper.best_test", "refit": "sweeper.refit_test"}  # kind -> study user attr
_END = "sweeper.end"  # the end steps' state: who runs them, since when, how they ended (``sweeper.finish``)
_END_REASON = "end_reason"
_LR = "lr"
_START = "start_point"  # a trial enqueued from the literature's recipes
_RESUMED = "resumed_from"  # a retried trial that continued an earlier try's checkpoint


@dataclass
class StudyReport:
    """What ``sweeper status`` and ``sweeper best`` print: counts by state, the best trial, its test score."""

    name: str
    budget: int
    counts: dict[str, int]
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    test: dict[str, Any] | None = None
    refit: dict[str, Any] | None = None  # the best trial's settings refit on train + val (``sweeper.best``)
    end: dict[str, Any] | None = None  # the end steps, once the budget is met: state "pending" / "running" / ...
    run_id: str | None = None  # the study's MLflow run, which holds its models (None: tracking off)

    def model_uris(self) -> dict[str, str]:
        """MLflow URIs of the study run's models, once scored: ``best`` (the selected network) and ``refit``."""
        scored = (("best", self.test), ("refit", self.refit)) if self.run_id else ()
        return {kind: f"runs:/{self.run_id}/{kind}_model" for kind, result in scored if result}


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds: a killed worker's trial is failed and retried after ``grace``.

    ``SWEEPER_HEARTBEAT`` and ``SWEEPER_HEARTBEAT_GRACE`` override the defaults (10 s, 3 intervals).
    """
    interval = int(os.environ.get("SWEEPER_HEARTBEAT", "10"))
    return interval, int(os.environ.get("SWEEPER_HEARTBEAT_GRACE", str(3 * interval)))


class StudyRecord:
    """An Optuna study with the spec stored in it, and typed access to what sweeper keeps there.

    ``StudyRecord.create`` makes (or checks and resumes) one; ``StudyRecord.open`` loads one by name,
    with a worker's sampler and the study's pruner.
    """

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        self.study, self.spec = study, spec

    @property
    def name(self) -> str:
        return self.study.study_name

    # -- create / open -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, spec: StudySpec, storage: str, trials: int | None = None, allow_changed: bool = False
    ) -> StudyRecord:
        """Create the study with its spec stored in it, or check an existing one's spec and resume it."""
        st = make_storage(storage, wait=True)  # in Docker or Kubernetes the database may come up after us
        study = optuna.create_study(study_name=spec.name, storage=st, direction=spec.direction, load_if_exists=True)
        stored = study.user_attrs.get(_SPEC)
        if stored is not None and not allow_changed and parse_spec(stored).fingerprint() != spec.fingerprint():
            raise StudyError(
                f"study {spec.name!r} already exists in {mask_url(storage)} with a different study file; "
                f"resume it unchanged, pick a new 'name', or pass --allow-changed-spec"
            )
        if study.direction.name.lower() != spec.direction:
            raise StudyError(
                f"study {spec.name!r} exists with direction {study.direction.name.lower()}, not {spec.direction}"
            )
        new = stored is None and not study.get_trials(deepcopy=False)
        study.set_user_attr(_SPEC, spec.to_dict())
        study.set_user_attr(_BUDGET, trials or spec.trials)
        if new and spec.warm_start == "literature":  # the first trials: the literature's recipes, then the sampler
            points = literature_points(spec.space, spec.network.n_hidden, spec.train.base_lr, spec.network.n_conv)
            for params in points[: trials or spec.trials]:  # never more than the budget: none left waiting
                study.enqueue_trial(params, user_attrs={_START: "literature"})
        if study.metric_names != [spec.metric]:  # optuna-dashboard shows "val_accuracy", not "Objective 0"
            with warnings.catch_warnings():  # experimental since Optuna 3.2, in use since: on purpose
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([spec.metric])
        return cls(study, spec)

    @classmethod
    def open(
        cls,
        name: str,
        storage: str | optuna.storages.BaseStorage,
        heartbeat: bool = False,
        wait: bool = False,
        fresh_sampler_seed: bool = False,
    ) -> StudyRecord:
        """The study and the spec stored with it, with this worker's sampler and the study's pruner.

        ``heartbeat``: the storage records this worker's heartbeats (a worker that runs trials).
        ``wait``: a database server that is down is waited for (``SWEEPER_DB_RETRY_S``), as a worker does.
        ``fresh_sampler_seed``: this worker's sampler gets a seed of its own (``strategy.sampler_seed``).
        """
        if isinstance(storage, str):
            interval, grace = heartbeat_settings() if heartbeat else (None, None)
            st = make_storage(storage, heartbeat_interval=interval, grace_period=grace, wait=wait or heartbeat)
        else:
            st = storage
        spec = _stored_spec(name, st, mask_url(storage) if isinstance(storage, str) else "the storage")
        study = optuna.load_study(
            study_name=name,
            storage=st,
            sampler=make_sampler(spec, sampler_seed(spec, fresh_sampler_seed)),
            pruner=make_pruner(spec),
        )
        return cls(study, spec)

    # -- the study's stored facts ----------------------------------------------------------------
    @property
    def budget(self) -> int:
        return int(self.study.user_attrs.get(_BUDGET, self.spec.trials))

    @property
    def parent_run_id(self) -> str | None:
        run = self.study.user_attrs.get(_PARENT_RUN)
        return str(run) if run else None

    def set_parent_run_id(self, run_id: str) -> None:
        self.study.set_user_attr(_PARENT_RUN, run_id)

    def result(self, kind: str, best: FrozenTrial | None = None) -> dict[str, Any] | None:
        """What was scored after the search for today's best trial: ``"test"`` (the selected network on the
        test split) or ``"refit"`` (its settings retrained on train + val, ``sweeper refit``). ``None`` when not
        scored, or scored for an earlier best trial (a later better trial makes it stale). ``best``: the best
        trial when the caller has it (else it is read from the storage)."""
        stored = self.study.user_attrs.get(_RESULTS[kind])
        if best is None and stored:
            best = self.best_trial()
        return dict(stored) if stored and best is not None and stored.get("trial") == best.number else None

    def set_result(self, kind: str, result: dict[str, Any]) -> None:
        self.study.set_user_attr(_RESULTS[kind], result)

    def end_state(self) -> dict[str, Any] | None:
        """The end steps of the study's current budget (``sweeper.finish``): ``None`` while the budget is not met,
        else a dict whose ``state`` is ``"pending"`` (nobody ran them yet), ``"running"`` (``owner``, ``beat``),
        ``"done"`` or ``"failed"`` (``error``). A state stored for another budget, or before the study file asked
        for a refit, reads as pending; a running one has its ``age``, the seconds since its finisher last renewed
        its claim."""
        if not self.done:
            return None
        stored = self.study.user_attrs.get(_END)
        if not stored or stored.get("budget") != self.budget or stored.get("refit") != self.spec.refit:
            return {"state": "pending", "budget": self.budget}
        state = dict(stored)
        if state["state"] == "running":  # since its finisher last renewed its claim (one clock: the database's)
            state["age"] = db_now(self.study) - float(state.get("beat", 0.0))
        return state

    def set_end_state(self, state: dict[str, Any]) -> None:
        self.study.set_user_attr(_END, {**state, "budget": self.budget, "refit": self.spec.refit})

    # -- what the trials say ---------------------------------------------------------------------
    def n_finished(self) -> int:
        return n_finished(self.study)

    @property
    def done(self) -> bool:
        return self.n_finished() >= self.budget

    def counts(self) -> dict[str, int]:
        counts = count_states(self.study)
        return {s.name.lower(): counts[s] for s in TrialState}

    def best_trial(self) -> FrozenTrial | None:
        if not self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return None
        return self.study.best_trial

    def report(self) -> StudyReport:
        rep = StudyReport(self.name, self.budget, self.counts())
        best = self.best_trial()
        if best is not None:
            rep.best_value, rep.best_params, rep.best_trial = best.value, best.params, best.number
        rep.test, rep.refit = self.result("test", best), self.result("refit", best)
        rep.end, rep.run_id = self.end_state(), self.parent_run_id
        return rep


def _stored_spec(name: str, storage: optuna.storages.BaseStorage, where: str) -> StudySpec:
    try:
        summary = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StudyError(
            f"no study named {name!r} in {where}; known studies: {', '.join(names) or 'none'} "
            f"(create one with 'sweeper launch STUDY_FILE')"
        ) from None
    raw = summary.user_attrs.get(_SPEC)
    if raw is None:
        raise StudyError(f"study {name!r} was not created by sweeper (it has no stored study file)")
    return parse_spec(raw)


def sweeper_study_names(storage: str) -> list[str]:
    """The names of the studies in ``storage`` that sweeper created (they carry a spec)."""
    summaries = optuna.get_all_study_summaries(make_storage(storage), include_best_trial=False)
    return [s.study_name for s in summaries if _SPEC in s.user_attrs]


def is_best_so_far(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Whether a just-finished trial is the study's best complete trial now."""
    try:
        return study.best_trial.number == trial.number
    except ValueError:  # no complete trial with a finite value
        return False


def count_states(study: optuna.Study, states: tuple[TrialState, ...] = tuple(TrialState)) -> Counter[TrialState]:
    """How many of the study's trials are in each of ``states``, as stored now (counted by the database)."""
    counts = reads.state_counts(study)
    if counts is None:
        return Counter(t.state for t in study.get_trials(deepcopy=False, states=states))
    return Counter({s: counts[s] for s in states if counts[s]})


def n_finished(study: optuna.Study) -> int:
    return sum(count_states(study, FINISHED).values())


# -- trial attributes ------------------------------------------------------------------------------
def tag_trial(trial: optuna.Trial, where: Mapping[str, str]) -> None:
    """Where a trial runs (host, worker, device, node, ...), as trial attributes."""
    for k, v in where.items():
        trial.set_user_attr(k, v)


def where_ran(trial: FrozenTrial, keys: tuple[str, ...] = ("host", "worker", "device")) -> dict[str, Any]:
    """Where a trial ran, as ``tag_trial`` recorded it (read by tests and scripts/gpu_paths.py)."""
    return {k: trial.user_attrs[k] for k in keys if k in trial.user_attrs}


def set_lr(trial: optuna.Trial, lr: float) -> None:
    trial.set_user_attr(_LR, lr)


def set_resumed(trial: optuna.Trial, number: int | None, epoch: int = 0, step: int = 0) -> None:
    """The trial continued trial ``number``'s checkpoint, taken at ``epoch`` (and ``step`` into it); ``None``: it
    did not (a retry inherits its earlier try's attributes: this one's own word replaces theirs)."""
    trial.set_user_attr(_RESUMED, None if number is None else {"trial": number, "epoch": epoch, "step": step})


def resumed_from(trial: FrozenTrial) -> dict[str, int] | None:
    return trial.user_attrs.get(_RESUMED)


def set_end_reason(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(_END_REASON, reason[:2000])


def end_reason(trial: FrozenTrial) -> str | None:
    """Why a trial ended (sweeper's reason, or Optuna's own for a heartbeat-failed trial)."""
    reason = trial.user_attrs.get(_END_REASON) or trial.system_attrs.get("fail_reason")
    return str(reason) if reason else None


def with_end_reason(trial: FrozenTrial, reason: str) -> FrozenTrial:
    """A copy of an ended trial that says why it ended, where its stored attributes do not (it was taken over)."""
    said = copy.copy(trial)
    said.user_attrs = {**trial.user_attrs, _END_REASON: reason[:2000]}
    return said


def tries_before(trial: FrozenTrial) -> list[int]:
    """The numbers of the earlier tries of a retried trial, oldest first (Optuna's ``retry_history``); [] for a
    first try."""
    with warnings.catch_warnings():  # experimental since 3.0, the one retry API Optuna 5 keeps
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial))


def first_try(trial: FrozenTrial) -> int:
    """The number of the trial's first try: its seeds derive from it, so a retry repeats its randomness."""
    return (tries_before(trial) or [trial.number])[0]


def retry_copy(trial: FrozenTrial) -> FrozenTrial:
    """A copy of a stopped trial to queue again: same parameters and attributes, but no end reason or resume."""
    retry = copy.copy(trial)
    retry.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (_END_REASON, _RESUMED)}
    return retry
