"""On CUDA: the CPU suite's training assertions again, on the GPU (skipped, with the reason, where there is none).

``python -m pytest -m cuda tests/test_cuda.py`` runs them; ``scripts/gpu_acceptance.sh`` runs them first.
"""

from __future__ import annotations

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
from sweeper.training.data import Dataset
from sweeper.training.objective import Objective, fit, prepare_data
from sweeper.training.population.trainer import PopulationTrainer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# bf16 against fp32, per member and epoch, 3 epochs on digits at learning rates that train steadily (<= 0.05):
# measured with CPU bf16 autocast at 0.04 % (losses) and 0.7 points (accuracy); a member whose loss rises
# (lr 0.5) amplifies any rounding and is no test of precision
BF16_LOSS_REL, BF16_ACC_ABS = 0.02, 0.03
STABLE = [  # (lr_scale, batch norm, max-norm, R-Drop alpha, label smoothing), base_lr 0.01
    (1, False, None, None, None),
    (3, True, None, None, None),
    (3, False, 3.0, None, None),
    (2, False, None, 0.5, None),
    (2, True, 3.0, None, 0.1),
    (5, False, None, None, 0.2),
    (2, True, None, 1.0, None),
    (5, False, 4.0, None, None),
]


@pytest.fixture(scope="module")
def spec3() -> StudySpec:
    return parse_spec(tiny_spec_dict(train={"epochs": 3, "device": "cuda"}))


@pytest.fixture(scope="module")
def data(spec3: StudySpec) -> Dataset:
    return prepare_data(spec3)


def _population(
    spec: StudySpec, data: Dataset, hps: list[Hparams], seeds: list[int], epochs: int, amp: bool = True
) -> list[list[dict[str, float]]]:
    trainer = PopulationTrainer(data, spec.train, spec.network, mask_seed=7, amp=amp)
    assert trainer.amp == amp
    trainer.add(list(range(len(hps))), hps, seeds)
    return [[r.metrics for r in trainer.train_epoch()] for _ in range(epochs)]


def test_one_trial_trains_on_cuda_and_reports_each_epoch(spec3: StudySpec, data: Dataset) -> None:
    from sweeper.workers.protocol import TrialProtocol

    class Protocol(TrialProtocol):  # the worker's trial protocol (it reports each epoch), keeping the network
        model: torch.nn.Module | None = None

        def trained(self, trial: optuna.Trial, model: torch.nn.Module) -> None:
            self.model = model

    assert data.train.x.device.type == "cuda"
    study = optuna.create_study(direction="maximize")
    protocol = Protocol(study, spec3, where={})
    study.optimize(Objective(spec3, data, protocol), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert list(trial.intermediate_values) == [0, 1, 2]
    assert protocol.model is not None and next(protocol.model.parameters()).device.type == "cuda"
    assert trial.value is not None and trial.value > 0.5  # 10 classes: it learned


def test_population_in_bf16_matches_fp32_within_tolerance(spec3: StudySpec, data: Dataset) -> None:
    hps = [
        Hparams(dropout=(0.2, 0.5), weight_decay=1e-4, momentum=0.9, lr_scale=s, batch_norm=bn, max_norm=mn,
                r_drop_alpha=rd, label_smoothing=ls)
        for s, bn, mn, rd, ls in STABLE
    ]  # fmt: skip
    seeds = list(range(len(hps)))
    fp32 = _population(spec3, data, hps, seeds, 3, amp=False)
    bf16 = _population(spec3, data, hps, seeds, 3, amp=True)
    worst = {"train_loss": 0.0, "val_loss": 0.0, "val_accuracy": 0.0}
    for e32, e16 in zip(fp32, bf16, strict=True):
        for m32, m16 in zip(e32, e16, strict=True):
            for k in ("train_loss", "val_loss"):
                worst[k] = max(worst[k], abs(m16[k] - m32[k]) / abs(m32[k]))
            worst["val_accuracy"] = max(worst["val_accuracy"], abs(m16["val_accuracy"] - m32["val_accuracy"]))
    print(f"bf16 vs fp32, worst member-epoch: {worst}")
    assert worst["train_loss"] <= BF16_LOSS_REL and worst["val_loss"] <= BF16_LOSS_REL, worst
    assert worst["val_accuracy"] <= BF16_ACC_ABS, worst
    assert fp32 != bf16, "bf16 autocast changed nothing: did the matmuls run in bf16?"
    assert all(m["train_loss"] < first["train_loss"] for m, first in zip(bf16[-1], bf16[0], strict=True))


def test_population_of_one_matches_sequential_trainer_on_cuda(spec3: StudySpec, data: Dataset) -> None:
    """tests/test_population.py's first assertion, in fp32 on the GPU (dropout 0: same numbers)."""
    hp = Hparams(dropout=(0.0, 0.0), weight_decay=1e-3, momentum=0.9, lr_scale=3.0, max_norm=1.0, lr_decay=0.9, l1=1e-4)
    sequential: list[dict[str, float]] = []
    fit(spec3, data, hp, 123, lambda epoch, m: sequential.append(m))
    stacked = [epoch[0] for epoch in _population(spec3, data, [hp], [123], 3, amp=False)]
    for s, p in zip(sequential, stacked, strict=True):
        for k in s:
            assert p[k] == pytest.approx(s[k], abs=1e-5), (k, s, p)
    assert sequential[-1]["train_loss"] < sequential[0]["train_loss"]


def test_changing_one_member_leaves_the_others_unchanged_on_cuda(spec3: StudySpec, data: Dataset) -> None:
    """tests/test_population.py's isolation assertion, bit for bit, in bf16 on the GPU."""
    base = Hparams(dropout=(0.1, 0.3), weight_decay=1e-4, momentum=0.9, lr_scale=2.0)
    other = Hparams(dropout=(0.0, 0.5), weight_decay=1e-2, momentum=0.5, lr_scale=10.0, batch_norm=True, max_norm=0.5,
                    l1=1e-3, r_drop_alpha=1.0, lr_decay=0.5)  # fmt: skip
    a = _population(spec3, data, [base, base, base], [1, 2, 3], 2)
    b = _population(spec3, data, [base, other, base], [1, 2, 3], 2)
    for ea, eb in zip(a, b, strict=True):
        assert ea[0] == eb[0] and ea[2] == eb[2], (ea, eb)  # bit for bit
        assert ea[1] != eb[1]
    assert a[0][0] != a[0][2]  # own seed: own init, data order and masks


def test_a_member_out_of_the_stack_is_the_network_the_stack_trains(spec3: StudySpec, data: Dataset) -> None:
    hps = [Hparams(dropout=(0.2, 0.5), lr_scale=2.0), Hparams(dropout=(0.0, 0.3), lr_scale=3.0, batch_norm=True)]
    trainer = PopulationTrainer(data, spec3.train, spec3.network, amp=False)
    trainer.add(["a", "b"], hps, [1, 2])
    trainer.train_epoch()
    assert trainer.stack is not None
    stacked = trainer.stack.net.eval()
    with torch.no_grad():
        logits = stacked(data.val.x.unsqueeze(0).expand(2, -1, -1))
        for k, key in enumerate(["a", "b"]):
            alone = trainer.member(key)
            assert next(alone.parameters()).device.type == "cuda" and alone.members == 1
            for name, t in alone.state_dict().items():
                assert torch.equal(t[0], stacked.state_dict()[name][k]), name
            # the same weights; K=1 and K=2 batched matmuls may pick kernels that sum in other orders
            assert torch.allclose(alone(data.val.x), logits[k], rtol=1e-4, atol=1e-4)


def test_the_logged_best_model_of_a_cuda_population_is_the_selected_member(tmp_path: Any) -> None:
    import mlflow

    from sweeper.tracking.selected import load_selected_weights

    spec = parse_spec(tiny_spec_dict("cudapop", trials=4, train={"device": "cuda"}))
    storage, uri = f"sqlite:///{tmp_path}/s.db", f"sqlite:///{tmp_path}/mlflow.db"
    rep = api.launch(spec, storage=storage, tracking=uri, population=2)
    record = StudyRecord.open("cudapop", storage)
    trials = record.study.get_trials()
    assert len(trials) == 4 and all(t.user_attrs["device"] == "cuda:0" for t in trials)
    best = record.study.best_trial
    assert rep.test is not None and rep.test["model"] == "selected"
    kept = load_selected_weights(uri, record.parent_run_id, best.number)
    assert kept is not None
    mlflow.set_tracking_uri(uri)
    logged = mlflow.pytorch.load_model(f"runs:/{record.parent_run_id}/best_model").state_dict()
    prefix = "net." if "mean" in logged else ""  # standardized data: the network sits behind its statistics
    for name, t in kept.items():
        assert torch.equal(logged[prefix + name].cpu(), t.cpu()), name
    # the stack scored it in bf16, the logged network alone in fp32: a few validation samples apart at most
    n_val = len(prepare_data(spec, "cpu").val.y)
    assert abs(rep.test["val_accuracy"] - best.value) <= 3 / n_val + 1e-9


def test_sweeper_check_passes_on_cuda() -> None:
    """``sweeper check`` on the main study file (``device: auto``) runs on the GPU and passes."""
    torch.cuda.reset_peak_memory_stats()
    res = CliRunner().invoke(main, ["check", str(ROOT / "studies" / "mnist1d_mlp.yaml")])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("PASS"), res.output
    assert torch.cuda.max_memory_allocated() > 0  # it trained on the GPU


def test_a_training_resumed_from_its_checkpoint_continues_on_cuda(spec3: StudySpec, data: Dataset) -> None:
    """A checkpoint's round trip on the GPU (its CUDA generator included): the resumed run's every epoch and weight
    against the run never stopped; exact on the CPU (tests/test_resume.py), here within the GPU's nondeterminism."""
    from test_resume import _interrupted

    from sweeper.training.objective import start

    hp = Hparams(dropout=(0.1, 0.3), lr_scale=2.0, mixup_alpha=0.2, ema_decay=0.9, lr_decay=0.9, batch_norm=True)
    whole = start(spec3, data, hp, seed=7)
    whole.run()
    resumed = _interrupted(spec3, data, hp, 20)  # mid-epoch
    assert [e.keys() for e in resumed.curve] == [e.keys() for e in whole.curve]
    for a, b in zip(resumed.curve, whole.curve, strict=True):
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    worst = max((resumed.model.state_dict()[k].float() - v.float()).abs().max().item()
                for k, v in whole.model.state_dict().items())  # fmt: skip
    print(f"resumed on CUDA: largest weight difference from the run never stopped {worst:.3g}")
    assert worst < 1e-4
