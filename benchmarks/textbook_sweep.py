"""The headline: sweeper's main study against a textbook Optuna + PyTorch sweep, same space, same CPU time.

    python benchmarks/textbook_sweep.py [--seeds 0 1] [--out results/headline_mnist1d.txt]

Both sweeps run in this one process, one after the other, on MNIST-1D's standard split (the paper's
generator settings, seed 42: 4000 training / 1000 test samples). Each holds out the same 600 of the
4000 training samples for validation (carved with the study seed), selects on validation accuracy,
and reports the best trial's accuracy on the official 1000 test samples (never used for selection).

  (a) sweeper: ``studies/mnist1d_mlp.yaml`` as the README's main job runs it (one worker, its trial
      budget), with MLflow tracking off. Its CPU time is the budget.
  (b) textbook: the code below ``# --- textbook`` is what a typical user writes from Optuna's PyTorch
      example: TPE, a ``DataLoader`` over a ``TensorDataset``, an ``nn.Dropout`` MLP, SGD with momentum
      and weight_decay, the same ranges, the median pruner. It runs trials until it has used the same
      CPU time; a trial still running when the budget is spent is cut (counted, not a candidate).

Time is process CPU time (``time.process_time``), not wall clock, so other work on the machine does
not change the budgets; both run with one torch thread by default (``--threads``), because idle OpenMP
threads spin and bill CPU time when the machine is busy. Sweeper's retraining of its best trial for the
test score is not counted (the textbook sweep scores test at the end of each trial, which is counted).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# --- textbook: a self-contained Optuna + PyTorch sweep, as a typical user writes it -------------------

EPOCHS = 30
BATCH_SIZE = 128
HIDDEN = (512, 512)
VAL_FRACTION = 0.15


def load_data(seed: int) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """MNIST-1D's standard split; validation is 15 % of the training samples (same rows as sweeper's)."""
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # 5000 samples, seed 42: 4000 train / 1000 test
    x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = round(VAL_FRACTION * len(x))
    val, train = order[:n_val], order[n_val:]

    def ds(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))

    x_test, y_test = d["x_test"].astype(np.float32), d["y_test"].astype(np.int64)
    return ds(x[train], y[train]), ds(x[val], y[val]), ds(x_test, y_test)


class Net(nn.Module):
    def __init__(self, p_input: float, p_hidden: list[float], batch_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(p_input)]
        width = 40
        for h, p in zip(HIDDEN, p_hidden, strict=True):
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers += [nn.ReLU(), nn.Dropout(p)]
            width = h
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in loader)
    return correct / len(loader.dataset)  # type: ignore[arg-type]


def textbook_sweep(seed: int, out_of_budget: Callable[[], bool], n_trials: int | None = None) -> optuna.Study:
    train_set, val_set, test_set = load_data(seed)

    def objective(trial: optuna.Trial) -> float:
        p_input = trial.suggest_float("dropout_input", 0.0, 0.2)
        p_hidden = [trial.suggest_float(f"dropout_hidden_{i + 1}", 0.2, 0.5) for i in range(len(HIDDEN))]
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        momentum = trial.suggest_float("momentum", 0.9, 0.99)
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        max_norm = trial.suggest_float("max_norm", 3, 5) if trial.suggest_categorical("use_max_norm", [0, 1]) else 0
        batch_norm = bool(trial.suggest_categorical("batch_norm", [0, 1]))
        lr_decay = trial.suggest_float("lr_decay", 0.95, 1.0)

        torch.manual_seed(seed * 10_000 + trial.number)
        model = Net(p_input, p_hidden, batch_norm)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
        train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True)
        val_loader = DataLoader(val_set, batch_size=BATCH_SIZE)
        for epoch in range(EPOCHS):
            model.train()
            for xb, yb in train_loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
                if max_norm:
                    with torch.no_grad():
                        for m in model.modules():
                            if isinstance(m, nn.Linear):
                                m.weight.copy_(torch.renorm(m.weight, 2, 0, max_norm))
            scheduler.step()
            val_acc = accuracy(model, val_loader)
            trial.report(val_acc, epoch)
            if out_of_budget():
                trial.set_user_attr("cut", True)
                raise optuna.TrialPruned()
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("test_accuracy", accuracy(model, DataLoader(test_set, batch_size=BATCH_SIZE)))
        return val_acc

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner()
    )
    if n_trials is not None:
        study.optimize(objective, n_trials=n_trials)
    while n_trials is None and not out_of_budget():
        study.optimize(objective, n_trials=1)
    return study


# --- the harness: run both, same CPU time, and print them side by side ---------------------------------

STUDY = Path(__file__).resolve().parents[1] / "studies" / "mnist1d_mlp.yaml"


def run_sweeper(seed: int, trials: int | None, workdir: str) -> dict[str, object]:
    from sweeper import api
    from sweeper.study.spec import load_spec
    from sweeper.training.data import load_dataset

    spec = load_spec(STUDY)
    spec = spec.model_copy(update={"seed": seed, "name": f"{spec.name}-seed{seed}"})
    assert spec.train.epochs == EPOCHS and spec.train.batch_size == BATCH_SIZE and spec.network.hidden == HIDDEN
    assert spec.data.dataset == "mnist1d_standard" and spec.data.val_fraction == VAL_FRACTION
    url = f"sqlite:///{workdir}/sweeper-{seed}.db"
    cpu, wall = time.process_time(), time.perf_counter()
    rep = api.launch(spec, trials=trials, storage=url, tracking="", score_test=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finished = rep.counts.get("complete", 0) + rep.counts.get("pruned", 0)
    assert finished == rep.budget, f"sweeper stopped early: {rep.counts} of budget {rep.budget}"
    test = api.score_best_on_test(spec.name, tracking="", storage=url)
    assert test is not None
    data = load_dataset(spec.data, spec.seed, spec.base_dir)
    return {
        "method": "sweeper (studies/mnist1d_mlp.yaml)",
        "budget": rep.budget,
        "trials": f"{rep.counts.get('complete', 0)}/{rep.counts.get('pruned', 0)}/0",
        "cpu_s": cpu,
        "wall_s": wall,
        "val": rep.best_value,
        "test": test["test_accuracy"],
        "sizes": (len(data.train.x), len(data.val.x), len(data.test.x)),
    }


def run_textbook(seed: int, cpu_budget: float, n_trials: int | None = None) -> dict[str, object]:
    start, wall = time.process_time(), time.perf_counter()
    study = textbook_sweep(seed, lambda: time.process_time() - start >= cpu_budget, n_trials)
    cpu, wall = time.process_time() - start, time.perf_counter() - wall
    states = [t.state for t in study.trials]
    cut = sum(1 for t in study.trials if t.user_attrs.get("cut"))
    pruned = states.count(optuna.trial.TrialState.PRUNED) - cut
    train_set, val_set, test_set = load_data(seed)
    return {
        "method": f"textbook, {'same CPU time' if n_trials is None else f'same {n_trials} trials'}",
        "trials": f"{states.count(optuna.trial.TrialState.COMPLETE)}/{pruned}/{cut}",
        "cpu_s": cpu,
        "wall_s": wall,
        "val": study.best_value,
        "test": study.best_trial.user_attrs["test_accuracy"],
        "sizes": (len(train_set), len(val_set), len(test_set)),
    }


def table(rows: list[tuple[int, dict[str, object]]]) -> str:
    head = (
        f"{'seed':>4}  {'method':<36} {'train/val/test n':<17} {'trials c/p/cut':>14} "
        f"{'CPU s':>7} {'wall s':>7} {'best val acc':>12} {'its test acc':>12}"
    )
    lines = [head]
    for seed, r in rows:
        n = "/".join(str(v) for v in r["sizes"])  # type: ignore[attr-defined]
        lines.append(
            f"{seed:>4}  {r['method']:<36} {n:<17} {r['trials']:>14} {r['cpu_s']:>7.0f} {r['wall_s']:>7.0f} "
            f"{r['val']:>12.4f} {r['test']:>12.4f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="study seeds (validation carve, sampler, init)")
    p.add_argument("--trials", type=int, help="sweeper's trial budget [default: the study file's]")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both sweeps")
    p.add_argument("--out", type=Path, help="also write the table here, e.g. results/headline_mnist1d.txt")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[tuple[int, dict[str, object]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ours = run_sweeper(seed, args.trials, tmp)
            rows.append((seed, ours))
            print(table(rows[-1:]), flush=True)
            rows.append((seed, run_textbook(seed, float(ours["cpu_s"]))))  # type: ignore[arg-type]
            print(table(rows[-1:]), flush=True)
            n = int(ours["budget"])  # type: ignore[call-overload]
            rows.append((seed, run_textbook(seed, float("inf"), n)))  # what a user running n_trials=n gets
            print(table(rows[-1:]), flush=True)
    text = (
        f"MNIST-1D standard split (mnist1d get_dataset_args(): 5000 samples, seed 42, 4000 train / 1000 test); "
        f"validation = {VAL_FRACTION:.0%} of the 4000 training samples, carved with the seed, so each network "
        f"trains on the first number of 'train/val/test n'.\n"
        f"MLP 40-{'-'.join(map(str, HIDDEN))}-10, {EPOCHS} epochs, batch {BATCH_SIZE}, the same search space; "
        f"textbook budget = sweeper's CPU time (process CPU time; MLflow off).\n"
        f"textbook runs twice: with sweeper's CPU time, and with sweeper's trial budget (its own CPU time).\n"
        f"trials c/p/cut: complete / pruned / cut by the budget. 'its test acc': the best-validation trial "
        f"on the official 1000 test samples.\n"
        f"torch={torch.__version__} optuna={optuna.__version__} python={platform.python_version()} "
        f"threads={torch.get_num_threads()}\n\n" + table(rows) + "\n"
    )
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
