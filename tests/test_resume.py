"""A killed or stopped trial resumes from its checkpoint and ends exactly as if it had never stopped.

Real worker processes, a real SIGKILL / SIGTERM, real checkpoints (a folder, and the study's MLflow run);
the comparison is bit for bit against the same trial run without interruption, on one torch thread.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.launchers.local import start_workers
from sweeper.settings import RunSettings
from sweeper.study.hparams import Hparams
from sweeper.study.record import StudyRecord, resumed_from
from sweeper.study.spec import parse_spec
from sweeper.tracking.selected import load_selected_weights
from sweeper.training.objective import prepare_data, start
from sweeper.workers.checkpoints import Checkpoints, DirStore, fingerprint

# every random stream a trial draws from: dropout masks (input and hidden), mixup, the data order; and every state:
# momentum, a decaying learning rate, the weight average; ~150 steps an epoch on digits
EXACT = {
    "train": {"epochs": 6, "batch_size": 8, "checkpoint_every": 1},
    "space": {"dropout_input": 0.1, "dropout_hidden": 0.3, "lr_scale": 2.0, "momentum": 0.9, "weight_decay": 1e-4,
              "mixup_alpha": 0.2, "ema_decay": 0.9, "lr_decay": 0.9, "max_norm": 3.0, "batch_norm": False},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_HEARTBEAT", "1")
    monkeypatch.setenv("SWEEPER_HEARTBEAT_GRACE", "3")


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _worker(name: str, url: str, tracking: str, checkpoint_dir: str | None = None) -> subprocess.Popen[bytes]:
    settings = RunSettings(storage=url, tracking=tracking, gpus="none", threads=1, checkpoint_dir=checkpoint_dir)
    return start_workers(name, settings)[0]


def _run(name: str, tmp: Path, **kw: Any) -> tuple[str, str]:
    url, tracking = f"sqlite:///{tmp}/{name}.db", f"sqlite:///{tmp}/mlflow.db"
    api.create(parse_spec(tiny_spec_dict(name, trials=1, **EXACT)), storage=url, tracking=tracking)
    return url, tracking


def _outcome(name: str, url: str, tracking: str) -> tuple[optuna.trial.FrozenTrial, dict[str, torch.Tensor]]:
    record = StudyRecord.open(name, url)
    done = record.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 1, [t.state for t in record.study.get_trials()]
    assert record.parent_run_id is not None
    weights = load_selected_weights(tracking, record.parent_run_id, done[0].number)
    assert weights is not None
    return done[0], weights


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[optuna.trial.FrozenTrial, dict[str, torch.Tensor]]:
    """The trial run without interruption, by a worker process like the others."""
    tmp = tmp_path_factory.mktemp("reference")
    url, tracking = _run("ref", tmp)
    proc = _worker("ref", url, tracking)
    assert proc.wait(timeout=300) == 0
    return _outcome("ref", url, tracking)


def _same(resumed: tuple[Any, dict[str, torch.Tensor]], reference: tuple[Any, dict[str, torch.Tensor]]) -> None:
    (trial, weights), (ref, ref_weights) = resumed, reference
    assert trial.intermediate_values == ref.intermediate_values  # every epoch's validation metric, exactly
    assert trial.value == ref.value
    assert weights.keys() == ref_weights.keys()
    for k in weights:
        assert torch.equal(weights[k], ref_weights[k]), k


def test_sigkilled_trial_resumes_from_its_checkpoint_bit_for_bit(tmp_path: Path, reference: Any) -> None:
    url, tracking = _run("killed", tmp_path)
    folder = tmp_path / "checkpoints"
    proc = _worker("killed", url, tracking, str(folder))
    try:  # killed once its second epoch's checkpoint is written (maybe later: any checkpoint must resume exactly)
        _wait_for("the second checkpoint", lambda: (folder / "killed" / "trial-0-000002.pt").exists())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    # a new worker fails the stale trial after the grace period, and its retry resumes
    assert _worker("killed", url, tracking, str(folder)).wait(timeout=300) == 0
    trial, weights = _outcome("killed", url, tracking)
    assert trial.number == 1 and trial.system_attrs["failed_trial"] == 0
    resumed = resumed_from(trial)
    assert resumed is not None and resumed["trial"] == 0 and 2 <= resumed["epoch"] < 6, resumed
    _same((trial, weights), reference)
    assert os.listdir(folder / "killed") == []  # the ended trial's checkpoints are deleted
    from mlflow import MlflowClient

    api.finish("killed", storage=url, tracking=tracking)  # the end steps, which `sweeper launch` runs
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name("killed")
    killed = client.search_runs([exp.experiment_id], "tags.`optuna.trial_number` = '0'")
    assert [r.info.status for r in killed] in ([], ["FAILED"])  # the dead worker's run is not left RUNNING


def test_sigterm_checkpoints_mid_epoch_in_mlflow_and_the_retry_resumes_exactly(tmp_path: Path, reference: Any) -> None:
    from mlflow import MlflowClient

    url, tracking = _run("term", tmp_path)
    proc = _worker("term", url, tracking)  # no folder: checkpoints go to the study's MLflow run
    study = StudyRecord.open("term", url).study
    try:
        _wait_for("a trial mid-training", lambda: any(t.intermediate_values for t in study.get_trials()))
        time.sleep(0.2)  # into the next epoch
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    stopped = study.get_trials(states=(TrialState.FAIL,))
    assert len(stopped) == 1 and "SIGTERM" in stopped[0].user_attrs["end_reason"]
    assert _worker("term", url, tracking).wait(timeout=300) == 0
    trial, weights = _outcome("term", url, tracking)
    resumed = resumed_from(trial)
    assert resumed is not None and resumed["trial"] == stopped[0].number and resumed["step"] > 0, resumed
    _same((trial, weights), reference)

    client = MlflowClient(tracking_uri=tracking)
    record = StudyRecord.open("term", url)
    assert record.parent_run_id is not None
    assert client.list_artifacts(record.parent_run_id, "checkpoints") == []  # deleted at the trial's end
    exp = client.get_experiment_by_name("term")
    run = client.search_runs([exp.experiment_id], f"tags.`optuna.trial_number` = '{trial.number}'")[0]
    curve = client.get_metric_history(run.info.run_id, "val_accuracy")  # one whole curve in the retry's run
    assert sorted(m.step for m in curve) == list(range(6))
    assert run.data.tags["sweeper.resumed_from"].startswith(f"trial {stopped[0].number}, epoch ")


SAFE = {"lr_scale": 1.0, "momentum": 0.9, "max_norm": 3.0}  # a trial that trains at batch size 1, never diverges


# -- the training state alone, in this process: what a checkpoint must hold --------------------------------------
HPS = {
    "sgd": Hparams(dropout=(0.1, 0.3, 0.2), lr_scale=2.0, weight_decay=1e-4, mixup_alpha=0.2, ema_decay=0.9,
                   lr_decay=0.9, max_norm=3.0, batch_norm=True, l1=1e-5),
    "adamw": Hparams(dropout=(0.0, 0.4, 0.3), optimizer="adamw", adamw_lr_scale=1.0, adamw_weight_decay=0.01,
                     r_drop_alpha=0.5, label_smoothing=0.1, grad_clip=1.0, dropout_kind="gaussian"),
}  # fmt: skip


class _Stop(Exception):
    pass


def _interrupted(spec: Any, data: Any, hp: Hparams, at: int, drop: str | None = None) -> Any:
    """Train, stop after ``at`` steps, save the state through bytes, scramble every global generator, resume."""
    training = start(spec, data, hp, seed=7)
    steps = 0

    def on_step() -> None:
        nonlocal steps
        steps += 1
        if steps == at:
            raise _Stop

    with pytest.raises(_Stop):
        training.run(on_step=on_step)
    buf = io.BytesIO()
    torch.save(training.state_dict(), buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    if drop:
        del state[drop]
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # another process's generators
    resumed = start(spec, data, hp, seed=7)
    resumed.load_state_dict({**state, drop: resumed.state_dict()[drop]} if drop else state)
    resumed.run()
    return resumed


@pytest.mark.parametrize("kind", sorted(HPS))
def test_training_state_round_trip_continues_exactly(kind: str) -> None:
    spec = parse_spec(tiny_spec_dict("state", network={"hidden": [32, 16]}, train={"epochs": 3, "batch_size": 32,
                      "early_stopping_patience": 2 if kind == "adamw" else None}))  # fmt: skip
    data = prepare_data(spec, "cpu")
    whole = start(spec, data, HPS[kind], seed=7)
    whole.run()
    per_epoch = -(-len(data.train.x) // 32)
    for at in (1, per_epoch, per_epoch + 7):  # mid-epoch, an epoch's last step, mid-epoch
        resumed = _interrupted(spec, data, HPS[kind], at)
        assert resumed.curve == whole.curve, at
        for k, v in whole.model.state_dict().items():
            assert torch.equal(resumed.model.state_dict()[k], v), (at, k)


@pytest.mark.parametrize("drop", ["torch_rng", "gen", "mixup", "opt"])
def test_a_state_left_out_changes_the_result(drop: str) -> None:
    """The exactness test can fail: leave one piece of the state out and the resumed run differs."""
    spec = parse_spec(tiny_spec_dict("state", network={"hidden": [32, 16]}, train={"epochs": 2, "batch_size": 32}))
    data = prepare_data(spec, "cpu")
    whole = start(spec, data, HPS["sgd"], seed=7)
    whole.run()
    resumed = _interrupted(spec, data, HPS["sgd"], 20, drop)
    assert resumed.curve != whole.curve


def test_a_checkpoint_for_other_parameters_or_unreadable_is_skipped(tmp_path: Path, caplog: Any) -> None:
    store = DirStore(tmp_path, "study")
    checkpoints = Checkpoints(store, 1)
    fp = fingerprint("spec", {"a": 1}, "trial")
    assert checkpoints.save(3, fp, {"epoch": 1})
    assert checkpoints.save(3, fp, {"epoch": 2})
    assert store.names() == ["trial-3-000002.pt"]  # the one before is deleted once the new one is written
    assert checkpoints.newest([3], fp) == (3, {"epoch": 2})
    assert checkpoints.newest([3], fingerprint("spec", {"a": 2}, "trial")) is None
    assert "another study file" in caplog.text
    store.put("trial-5-000001.pt", b"not a checkpoint")
    assert checkpoints.newest([3, 5], fp) == (3, {"epoch": 2})  # the newer try's is unreadable: the older one
    assert "not readable" in caplog.text
    checkpoints.drop([3, 5])
    assert store.names() == []


# -- a population's members: resumed at an epoch's end; exact where no dropout mask is drawn ------------------------
# (a member's dropout masks come from the population's streams, shared by slot: a resumed member draws other masks)
STACKED = {
    "train": {"epochs": 6, "batch_size": 8, "checkpoint_every": 1, "population": 2},
    "space": {"dropout_input": 0.0, "dropout_hidden": 0.0, "lr_scale": 2.0, "momentum": 0.9, "weight_decay": 1e-4,
              "lr_decay": 0.9, "max_norm": 3.0, "batch_norm": False},
}  # fmt: skip


def _population(name: str, tmp: Path) -> str:
    url = f"sqlite:///{tmp}/{name}.db"
    api.create(parse_spec(tiny_spec_dict(name, trials=2, **STACKED)), storage=url, tracking="")
    return url


def test_killed_population_members_resume_at_their_last_epoch_checkpoint(tmp_path: Path) -> None:
    ref_url = _population("ref", tmp_path)
    assert _worker("ref", ref_url, "").wait(timeout=300) == 0
    ref = {t.number: t for t in StudyRecord.open("ref", ref_url).study.get_trials()}

    url, folder = _population("pop", tmp_path), tmp_path / "checkpoints"
    proc = _worker("pop", url, "", str(folder))
    try:
        second = {"trial-0-000002.pt", "trial-1-000002.pt"}
        _wait_for("both members' second checkpoints", lambda: second <= set(DirStore(folder, "pop").names()))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    study = StudyRecord.open("pop", url).study
    killed = {t.number: len(t.intermediate_values) for t in study.get_trials()}
    assert _worker("pop", url, "", str(folder)).wait(timeout=300) == 0
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2
    for trial in done:
        first = trial.system_attrs["failed_trial"]
        resumed = resumed_from(trial)
        assert resumed is not None and resumed["trial"] == first and resumed["epoch"] >= 2, resumed
        # each member ends exactly as it did in a population never stopped (no dropout: no mask stream)
        assert trial.intermediate_values == ref[first].intermediate_values
        assert trial.value == ref[first].value
        # epochs trained for it: the killed try's, then from its checkpoint on: at most one interval more than 6
        assert killed[first] + 6 - resumed["epoch"] <= 6 + 1
    assert os.listdir(folder / "pop") == []


def test_a_checkpoint_that_cannot_be_written_is_one_warning_and_training_goes_on(tmp_path: Path, caplog: Any) -> None:
    (tmp_path / "study").write_text("a file where the checkpoint folder should be")
    checkpoints = Checkpoints(DirStore(tmp_path, "study"), 1)
    with caplog.at_level("INFO", logger="sweeper"):
        assert not checkpoints.save(1, "fp", {"epoch": 1})
        assert not checkpoints.save(2, "fp", {"epoch": 1})
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "not written" in r.getMessage()]
    assert [level for level, _ in said] == ["WARNING", "INFO"], said  # warned once per outage, not per trial
    assert "training goes on" in said[0][1]


def test_a_retry_does_not_inherit_its_earlier_trys_resume(tmp_path: Path) -> None:
    """Optuna's retry copies the failed try's attributes: its ``resumed_from`` must not read as the retry's own."""
    import warnings

    from sweeper.study.record import set_resumed
    from sweeper.workers.protocol import TrialProtocol

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    first = study.ask()
    set_resumed(first, 0, 2, 0)
    study.tell(first, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.trials[0])
    retry = study.ask()  # the queued retry
    assert resumed_from(study.trials[1]) is not None  # inherited
    TrialProtocol(study, parse_spec(tiny_spec_dict()), {}).begin(retry)
    assert resumed_from(study.trials[1]) is None


def test_auto_checkpoints_within_an_epoch_once_its_interval_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An epoch of an hour is checkpointed within it (``auto``), at a step: the state a retry resumes exactly."""
    import sweeper.workers.checkpoints as checkpoints_module
    from sweeper.training.objective import Objective
    from sweeper.workers.protocol import TrialProtocol

    monkeypatch.setattr(checkpoints_module, "AUTO_MIN_S", 0.05)  # a minute, scaled to this epoch
    monkeypatch.setattr(checkpoints_module, "AUTO_COST_SHARE", 1.0)  # and the save's time with it
    spec = parse_spec(tiny_spec_dict("auto", train={"epochs": 1, "batch_size": 1}, space=SAFE))  # ~1,250 steps
    data = prepare_data(spec, "cpu")
    written: list[bytes] = []

    class Kept(DirStore):
        def put(self, name: str, blob: bytes) -> None:
            written.append(blob)
            super().put(name, blob)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    protocol = TrialProtocol(study, spec, {}, checkpoints=Checkpoints(Kept(tmp_path, "auto"), "auto"))
    study.optimize(Objective(spec, data, protocol), n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert len(written) >= 2, len(written)  # one epoch, several checkpoints
    states = [torch.load(io.BytesIO(b), weights_only=True)["state"] for b in written]
    assert all(s["epoch"] == 0 and s["perm"] is not None and 0 < s["pos"] < len(data.train.x) for s in states)
