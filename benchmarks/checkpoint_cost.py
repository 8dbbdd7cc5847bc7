"""What a trial's checkpoints cost: seconds per save, size, and the share of training time at each interval.

Side by side, on the same machine and run: the reference MLP (784-1024-1024-10, 60,000 x 784 synthetic samples,
batch 128, SGD + momentum: ``benchmarks/bench.py``'s reference workload) and a user-sized network (~10 M parameters:
784-3072-2560-10, on 10,000 samples so that an epoch stays short on a CPU). Each trains with sweeper's trainer
(``sweeper.training.train.Training``); each checkpoint is written through the product's own path
(``sweeper.workers.checkpoints.Checkpoints.save``: ``torch.save`` of the whole training state, then the store) to
a folder (``--checkpoint-dir``) and to a local MLflow store's run artifacts (the default when tracking is on).

    python benchmarks/checkpoint_cost.py                      # CPU, ~4 minutes on 2 cores
    python benchmarks/checkpoint_cost.py --out results/checkpoint_cost.txt
    python benchmarks/checkpoint_cost.py --quick --epochs 2         # a smoke run (seconds)

Measured: an epoch's training time (the median of ``--epochs``), a save's time (the median of 5) and size. The cost
at ``checkpoint_every: 1`` is one save per epoch; at ``auto`` (the default) a save comes at the first training step
at least max(60 s, 20 x the save's time) after the last one, so its cost is the save's time over that interval.
A SIGTERM (``docker compose stop``, a preemption notice) writes one save at the next step: its time is the save's.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import n_params, synthetic  # noqa: E402

from sweeper.study.hparams import Hparams  # noqa: E402
from sweeper.study.spec import TrainSpec  # noqa: E402
from sweeper.training.models import MLP  # noqa: E402
from sweeper.training.train import Training, seed_everything  # noqa: E402
from sweeper.workers.checkpoints import AUTO_COST_SHARE, AUTO_MIN_S, Checkpoints, DirStore, MlflowStore  # noqa: E402

WORKLOADS = {
    "reference MLP": dict(n_train=60_000, in_features=784, hidden=(1024, 1024)),
    "user net ~10M": dict(n_train=10_000, in_features=784, hidden=(3072, 2560)),
}

QUICK = {"quick MLP": dict(n_train=2_000, in_features=64, hidden=(64, 64))}


def _stores(tmp: Path) -> dict[str, Checkpoints]:
    import mlflow

    uri = f"sqlite:///{tmp}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("checkpoint-cost", artifact_location=str(tmp / "mlartifacts"))
    run = client.create_run(exp).info.run_id
    return {
        "folder": Checkpoints(DirStore(tmp / "folder", "study"), 1),
        "MLflow run": Checkpoints(MlflowStore(uri, run), 1),
    }


def measure(name: str, n_train: int, in_features: int, hidden: tuple[int, ...], epochs: int, tmp: Path) -> list[str]:
    device = torch.device("cpu")
    data = synthetic(n_train, 2_000, in_features, device)
    hp = Hparams(dropout=(0.2, 0.5, 0.5), lr_scale=10.0, momentum=0.95, weight_decay=1e-4)
    settings = TrainSpec(epochs=epochs, batch_size=128, base_lr=1e-3, device="cpu")
    seed_everything(0)
    training = Training(MLP(in_features, 10, hidden, hp.dropout), data, hp, settings, seed=0, metric="val_accuracy")
    marks = [time.perf_counter()]
    training.run(on_epoch=lambda e, m: marks.append(time.perf_counter()))
    epoch_s = statistics.median(b - a for a, b in zip(marks, marks[1:], strict=False))
    buf = io.BytesIO()
    torch.save(training.state_dict(), buf)
    size = len(buf.getvalue())
    rows = []
    for store, checkpoints in _stores(tmp / name.replace(" ", "_")).items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            assert checkpoints.save(0, "bench", training.state_dict())
            times.append(time.perf_counter() - start)
        save_s = statistics.median(times)
        interval = max(AUTO_MIN_S, save_s / AUTO_COST_SHARE)
        rows.append(
            f"{name:15s} {n_params(in_features, hidden) / 1e6:6.2f} M {store:10s} {size / 2**20:7.1f} MB "
            f"{epoch_s:8.2f} s {save_s:7.3f} s {100 * save_s / epoch_s:7.1f} %   every {interval:4.0f} s "
            f"{100 * save_s / interval:6.2f} %"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per workload (the median is used)")
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--quick", action="store_true", help="small networks, 2 epochs: a smoke run (tests)")
    args = parser.parse_args()
    workloads = QUICK if args.quick else WORKLOADS
    lines = [
        f"checkpoint cost, {platform.node()} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU)",
        "size: the checkpoint file (weights, momentum, training state); save: torch.save + write, median of 5;",
        "auto: a save at the first step >= max(60 s, 20 x save) after the last: its cost is save / that interval;",
        "a SIGTERM (docker compose stop: 60 s grace) writes one save at the next step: the save column",
        "",
        f"{'workload':15s} {'params':>8s} {'store':10s} {'size':>10s} {'epoch':>10s} {'save':>9s} "
        f"{'every 1 ep':>9s}   {'auto: interval, cost':>22s}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, w in workloads.items():
            rows = measure(name, epochs=args.epochs, tmp=Path(tmp), **w)  # type: ignore[arg-type]
            lines += rows
            print("\n".join(rows), flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
