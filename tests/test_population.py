"""Population training: K stacked MLPs match the sequential trainer, stay isolated, and run a real study."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import tiny_spec_dict
from sweeper import api
from sweeper.cli import main
from sweeper.study.record import StudyRecord
from sweeper.study.space import Hparams
from sweeper.study.spec import StudySpec, parse_spec
from sweeper.training.data import Dataset, load_dataset
from sweeper.training.layers import dropout
from sweeper.training.objective import fit, prepare_data
from sweeper.training.population.trainer import PopulationTrainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec3() -> StudySpec:
    return parse_spec(tiny_spec_dict(train={"epochs": 3}))


@pytest.fixture(scope="module")
def data(spec3: StudySpec) -> Dataset:
    return prepare_data(spec3, "cpu")


def _population(spec: StudySpec, data: Dataset, hps: list[Hparams], seeds: list[int], epochs: int) -> list[list[Any]]:
    trainer = PopulationTrainer(data, spec.train, spec.network, mask_seed=7)
    trainer.add(list(range(len(hps))), hps, seeds)
    return [[r.metrics for r in trainer.train_epoch()] for _ in range(epochs)]


def _sequential(spec: StudySpec, data: Dataset, hp: Hparams, seed: int) -> list[dict[str, float]]:
    """Each epoch's metrics of the one-trial trainer (``objective.fit``)."""
    epochs: list[dict[str, float]] = []
    fit(spec, data, hp, seed, lambda epoch, m: epochs.append(m))
    return epochs


@pytest.mark.parametrize(
    "hp",
    [
        Hparams(dropout=(0.0, 0.0), weight_decay=1e-3, momentum=0.9, lr_scale=3.0, max_norm=1.0, lr_decay=0.9, l1=1e-4),
        Hparams(dropout=(0.0, 0.0), batch_norm=True, weight_decay=1e-3, momentum=0.95, lr_scale=2.0, r_drop_alpha=0.5),
        Hparams(dropout=(0.0, 0.0), batch_norm=True, momentum=0.9, lr_scale=20.0, label_smoothing=0.2, grad_clip=0.3),
        Hparams(dropout=(0.0, 0.0), momentum=0.9, lr_scale=3.0, r_drop_alpha=0.5, label_smoothing=0.1),
    ],
    ids=["l2-l1-maxnorm-decay", "batchnorm-rdrop", "smoothing-clip", "smoothing-rdrop"],
)
def test_population_of_one_matches_sequential_trainer(spec3: StudySpec, data: Dataset, hp: Hparams) -> None:
    # dropout 0: same init (same seed), same batch order (same generator), so the same numbers
    sequential: list[dict[str, float]] = []
    fit(spec3, data, hp, 123, lambda epoch, m: sequential.append(m))
    stacked = [epoch[0] for epoch in _population(spec3, data, [hp], [123], 3)]
    assert len(stacked) == len(sequential) == 3
    for s, p in zip(sequential, stacked, strict=True):
        assert s.keys() == p.keys()
        for k in s:
            assert p[k] == pytest.approx(s[k], abs=1e-5), (k, s, p)
    assert sequential[-1]["train_loss"] < sequential[0]["train_loss"]  # it did learn: the check can fail


def test_dropout_masks_have_each_members_rate_and_inverted_scale() -> None:
    rates = torch.tensor([0.0, 0.2, 0.5])
    h = torch.ones(3, 4000, 64)
    out = dropout(h, rates, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], h[0])  # p = 0 is the identity, bit for bit
    for k, p in enumerate(rates.tolist()[1:], start=1):
        kept = out[k] != 0
        assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.01)
        assert torch.allclose(out[k][kept], torch.tensor(1 / (1 - p)))


def test_training_draws_each_members_dropout_masks_at_its_rate(
    spec3: StudySpec, data: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The population's training passes really drop units: per member, at its own rate, with its own masks."""
    from sweeper.training import layers

    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def recording(h: torch.Tensor, p: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = dropout(h, p, gen)
        calls.append((h.detach().clone(), p.clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(layers, "dropout", recording)
    rates = [(0.2, 0.5), (0.2, 0.5), (0.0, 0.0)]
    trainer = PopulationTrainer(data, spec3.train, spec3.network, mask_seed=7)
    trainer.add([0, 1, 2], [Hparams(dropout=r) for r in rates], [1, 1, 1])  # same seed: same init, same batches
    first, second, third = [r.metrics for r in trainer.train_epoch()]
    steps = -(-len(data.train.x) // spec3.train.batch_size)
    assert len(calls) == 2 * steps  # input and hidden layer, every step; no R-Drop: no second pass
    trainer.evaluate(data.val)
    assert len(calls) == 2 * steps, "evaluation draws no masks"
    kept, live = torch.zeros(3, 2), torch.zeros(3, 2)  # per member and layer, over the whole epoch
    for n, (h, p, out) in enumerate(calls):
        layer = n % 2
        assert p.tolist() == pytest.approx([r[layer] for r in rates])
        for k in range(3):
            nonzero = h[k] != 0  # a unit that is 0 (a constant pixel, a ReLU off) shows no mask
            on = out[k][nonzero] != 0
            kept[k, layer] += on.sum()
            live[k, layer] += nonzero.sum()
            assert torch.allclose(out[k][nonzero][on], h[k][nonzero][on] / (1 - rates[k][layer]))  # inverted scale
        assert torch.equal(out[2], h[2])  # rate 0: the identity, bit for bit
        if n == 0:  # same rate, same seed, same batch: only the slot's own masks tell members 0 and 1 apart
            assert torch.equal(h[0], h[1]) and not torch.equal(out[0] != 0, out[1] != 0)
    for k in range(3):
        for layer in range(2):
            assert (kept[k, layer] / live[k, layer]).item() == pytest.approx(1 - rates[k][layer], abs=0.02)
    # the masks changed training: members 0 and 1 differ from each other and from the undropped member 2
    assert first != second and first != third


def test_r_drop_beside_a_batch_norm_member_leaves_its_running_statistics_alone(spec3: StudySpec, data: Dataset) -> None:
    """R-Drop's second pass must not move a neighbour's batch-norm statistics: its validation stays the same."""
    bn = Hparams(dropout=(0.1, 0.3), batch_norm=True, momentum=0.9, lr_scale=2.0)
    plain = Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=2.0)
    r_drop = Hparams(dropout=(0.1, 0.3), momentum=0.9, lr_scale=2.0, r_drop_alpha=1.0)
    beside_plain = _population(spec3, data, [bn, plain], [1, 2], 2)
    beside_r_drop = _population(spec3, data, [bn, r_drop], [1, 2], 2)
    for a, b in zip(beside_plain, beside_r_drop, strict=True):
        assert a[0] == b[0]  # bit for bit, validation included
        assert a[1] != b[1]  # the neighbour did change
    # and a batch-norm member with R-Drop trained in a stack trains as it does alone
    bn_r_drop = Hparams(dropout=(0.0, 0.0), batch_norm=True, momentum=0.9, lr_scale=2.0, r_drop_alpha=1.0)
    bn_plain = Hparams(dropout=(0.0, 0.0), batch_norm=True, momentum=0.9, lr_scale=2.0)
    stacked = _population(spec3, data, [bn_r_drop, bn_plain], [1, 2], 3)
    for j, (hp, seed) in enumerate([(bn_r_drop, 1), (bn_plain, 2)]):
        for s, p in zip(_sequential(spec3, data, hp, seed), [epoch[j] for epoch in stacked], strict=True):
            assert p == pytest.approx(s, abs=1e-5), (j, s, p)


def test_a_one_sample_batch_is_skipped_by_batch_norm_members_only(data: Dataset) -> None:
    """As the sequential trainer does: batch norm skips a last batch of 1, a member without it trains on it."""
    spec = parse_spec(tiny_spec_dict(train={"epochs": 2, "batch_size": 628}))
    assert len(data.train.x) % 628 == 1
    plain = Hparams(dropout=(0.0, 0.0), momentum=0.9, lr_scale=3.0, max_norm=1.0, l1=1e-4)
    bn = Hparams(dropout=(0.0, 0.0), batch_norm=True, momentum=0.9, lr_scale=3.0, r_drop_alpha=0.5)
    stacked = _population(spec, data, [plain, bn], [1, 2], 2)
    for j, (hp, seed) in enumerate([(plain, 1), (bn, 2)]):
        for s, p in zip(_sequential(spec, data, hp, seed), [epoch[j] for epoch in stacked], strict=True):
            assert p == pytest.approx(s, abs=1e-5), (j, s, p)
    alone = _population(spec, data, [plain], [1], 2)
    assert [e[0] for e in alone] == [e[0] for e in stacked]


def test_changing_one_member_leaves_the_others_unchanged(spec3: StudySpec, data: Dataset) -> None:
    base = Hparams(dropout=(0.1, 0.3), weight_decay=1e-4, momentum=0.9, lr_scale=2.0)
    other = Hparams(
        dropout=(0.0, 0.5),
        weight_decay=1e-2,
        momentum=0.5,
        lr_scale=10.0,
        batch_norm=True,
        max_norm=0.5,
        l1=1e-3,
        r_drop_alpha=1.0,
        lr_decay=0.5,
    )
    a = _population(spec3, data, [base, base, base], [1, 2, 3], 2)
    b = _population(spec3, data, [base, other, base], [1, 2, 3], 2)
    for ea, eb in zip(a, b, strict=True):
        assert ea[0] == eb[0] and ea[2] == eb[2]  # bit for bit
        assert ea[1] != eb[1]
    # members differ from each other: own seed -> own init, data order and masks
    assert a[0][0] != a[0][2]


def test_pruned_member_leaves_the_stack_and_the_rest_train_on_unchanged(spec3: StudySpec, data: Dataset) -> None:
    hps = [Hparams(dropout=(0.0, 0.0), lr_scale=s) for s in (1.0, 3.0, 5.0)]
    full = PopulationTrainer(data, spec3.train, spec3.network)
    full.add(["a", "b", "c"], hps, [1, 2, 3])
    part = PopulationTrainer(data, spec3.train, spec3.network)
    part.add(["a", "b", "c"], hps, [1, 2, 3])
    full.train_epoch(), part.train_epoch()
    part.remove(["b"])
    assert part.size == 2 and part.stack is not None and part.stack.net.linears[0].weight.shape[0] == 2  # freed
    part.add(["d"], [hps[1]], [4])  # a refill joins at the epoch boundary, at its own epoch 0
    f2, p2 = full.train_epoch(), part.train_epoch()
    by_key = {r.key: r for r in p2}
    assert [r.key for r in p2] == ["a", "c", "d"] and by_key["d"].epoch == 0 and by_key["a"].epoch == 1
    for r in f2:
        if r.key != "b":
            assert by_key[r.key].metrics == pytest.approx(r.metrics, abs=1e-6)


def test_diverged_member_is_reported_with_its_reason(spec3: StudySpec, data: Dataset) -> None:
    trainer = PopulationTrainer(data, spec3.train, spec3.network)
    trainer.add(["ok", "bad"], [Hparams(dropout=(0.0, 0.2)), Hparams(dropout=(0.0, 0.2), lr_scale=1e9)], [1, 2])
    ok, bad = trainer.train_epoch()
    assert ok.error is None and bad.error is not None and "loss became" in bad.error


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_population_study_reports_each_trial_and_meets_the_budget(storage_url: str, tracking_uri: str) -> None:
    spec = parse_spec(tiny_spec_dict("pop", trials=5))
    rep = api.launch(spec, storage=storage_url, tracking=tracking_uri, population=3, score_test=False)
    trials = _study(storage_url, "pop").get_trials()
    assert len(trials) == 5  # one worker: exactly the budget, no overshoot
    assert rep.counts["complete"] + rep.counts["pruned"] == 5 and rep.best_value is not None
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert list(t.intermediate_values) == list(range(len(t.intermediate_values))) and t.intermediate_values
        assert t.user_attrs["worker"] == "0" and "lr" in t.user_attrs
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("pop")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("sweeper.role") == "trial"]
    assert sorted(r.info.run_name for r in runs) == sorted(f"trial-{t.number}" for t in trials)
    assert all("val_accuracy" in r.data.metrics and r.info.status == "FINISHED" for r in runs)


def test_population_trial_value_is_the_mean_of_its_last_epochs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/last.db"
    spec = parse_spec(tiny_spec_dict("last", trials=3, metric_epochs=2, train={"epochs": 4}, pruner="none"))
    api.launch(spec, storage=url, tracking="", population=3, score_test=False)
    trials = _study(url, "last").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        last = [t.intermediate_values[e] for e in (2, 3)]
        assert t.value == pytest.approx(sum(last) / 2)


def test_population_marks_diverged_trials_pruned_with_reason(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/div.db"
    spec = parse_spec(tiny_spec_dict("div", trials=3, space={"lr_scale": 1e9, "max_norm": False, "batch_norm": False}))
    api.launch(spec, storage=url, tracking="", population=2, score_test=False)
    trials = _study(url, "div").get_trials()
    assert len(trials) == 3
    assert all(t.state == TrialState.PRUNED and "loss became" in t.user_attrs["end_reason"] for t in trials)


def test_cli_population_option(tmp_path: Path) -> None:
    study = tmp_path / "s.yaml"
    import yaml

    study.write_text(yaml.safe_dump(tiny_spec_dict("cli", trials=2, train={"epochs": 1, "population": 2})))
    url = f"sqlite:///{tmp_path}/cli.db"
    res = CliRunner().invoke(main, ["launch", str(study), "--storage", url, "--tracking-uri", "", "--population", "2"])
    assert res.exit_code == 0, res.output
    # one epoch, warm-up 1: nothing can be pruned, so both trials complete
    assert "cli: 2 complete (budget 2)" in res.output, res.output
    assert [t.state for t in _study(url, "cli").get_trials()] == [TrialState.COMPLETE] * 2
    bad = CliRunner().invoke(main, ["worker", "cli", "--storage", url, "--population", "0"])
    assert bad.exit_code == 2 and "--population" in bad.output
    assert parse_spec(tiny_spec_dict(train={"population": 4})).train.population == 4


def test_benchmark_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench", bench)  # its dataclass looks its module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "t.txt"
    text = bench.main(["--device", "cpu", "--tiny", "--out", str(out)])
    assert out.read_text() == text
    for name in ("(a) textbook", "(b) sweeper", "(c) population K=1", "(c) population K=2", "TFLOP/s"):
        assert name in text


def test_two_population_workers_share_the_budget_exactly(pg_url: str) -> None:
    import threading

    from sweeper.settings import RunSettings
    from sweeper.workers.worker import run_worker

    spec = parse_spec(tiny_spec_dict("two", trials=5, train={"epochs": 1}))
    api.create(spec, trials=5, storage=pg_url, tracking="")
    ran: list[int] = []
    settings = RunSettings(storage=pg_url, tracking="", population=3)
    workers = [
        threading.Thread(target=lambda i=i: ran.append(run_worker("two", settings, worker_id=i))) for i in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    trials = _study(pg_url, "two").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5, [(t.number, t.state, t.user_attrs.get("end_reason")) for t in trials]
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert sum(ran) == 5  # a trial created in a race for the last slot ends FAIL untrained, not counted


def test_a_crash_fails_the_running_members_and_leaves_none_running(tmp_path: Path) -> None:
    from sweeper.study.record import StudyRecord
    from sweeper.workers.population import PopulationRunner
    from sweeper.workers.protocol import TrialProtocol

    url = f"sqlite:///{tmp_path}/crash.db"
    spec = parse_spec(tiny_spec_dict("crash", trials=4))
    api.create(spec, trials=4, storage=url, tracking="")
    record = StudyRecord.open("crash", url)
    study, spec = record.study, record.spec

    def broken_hook(trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("tracking bug")

    with pytest.raises(RuntimeError, match="tracking bug"):
        protocol = TrialProtocol(study, spec, where={}, hooks=[broken_hook])
        PopulationRunner(study, prepare_data(spec, "cpu"), 2, 4, protocol).run()
    trials = study.get_trials()
    assert trials and all(t.state == TrialState.FAIL for t in trials)
    assert all("tracking bug" in t.user_attrs["end_reason"] for t in trials)


def test_a_population_keeps_its_selected_members_network(tmp_path: Any) -> None:
    """The best model of a population study is the trained member itself, taken out of the stack."""
    spec = parse_spec(tiny_spec_dict("popkeep", trials=4))
    storage, uri = f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/mlflow.db"
    rep = api.launch(spec, storage=storage, tracking=uri, population=2)
    best = StudyRecord.open("popkeep", storage).study.best_trial
    assert rep.test["model"] == "selected"
    n_val = len(load_dataset(spec.data, spec.seed).val.y)
    # the stack's batched matmuls and nn.Linear sum in other orders: at most one validation sample apart
    assert abs(rep.test["val_accuracy"] - best.value) <= 1 / n_val + 1e-9
