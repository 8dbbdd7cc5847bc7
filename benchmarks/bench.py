"""Trials per hour: the textbook loop vs sweeper's trainer vs population training, on the same data.

Run in one process, side by side, with the same network, batch size and hyperparameters:
  (a) textbook: a torch DataLoader over a TensorDataset, one trial at a time, as in Optuna's
      PyTorch example (batches built on the host and copied to the device each step);
  (b) sweeper: ``sweeper.training.train.train`` (data resident on the device, one host sync per epoch);
  (c) population: ``sweeper.training.population`` with K trials stacked, for each K in ``--ks``.

Reference size (the default): 784-1024-1024-10 MLP, batch 128, 60,000 x 784 synthetic samples; ``--mnist1d``:
the MNIST-1D study network, 40-512-512-10, on 3,400 x 40 samples (the study's training split).

    python benchmarks/bench.py --device cuda                      # full size on a GPU, K up to 128
    python benchmarks/bench.py --device cuda --mnist1d --trial-epochs 30
    python benchmarks/bench.py --device cpu --small               # CPU smoke run (a few minutes)
    python benchmarks/bench.py --device cpu --small --out results/bench_cpu.txt

FLOPs are counted as 6 * parameters * training samples per trial-epoch (forward + backward); the
validation pass each epoch is timed but not counted, so the TFLOP/s is a floor. On CUDA the table adds each
method's share of the GPU's bf16 peak (``--peak-tflops``, default 790: an H200's 8192^3 bf16 matmul, measured);
(a) and (b) train in fp32, the populations' matmuls in bf16.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sweeper.study.hparams import Hparams
from sweeper.study.spec import NetworkSpec, TrainSpec
from sweeper.training.data import Dataset, Split
from sweeper.training.models import MLP
from sweeper.training.population.trainer import PopulationTrainer
from sweeper.training.train import seed_everything, train

SIZES = {
    "full": dict(n_train=60_000, n_val=10_000, in_features=784, hidden=(1024, 1024), ks=(1, 8, 32, 64, 128)),
    "mnist1d": dict(n_train=3_400, n_val=600, in_features=40, hidden=(512, 512), ks=(1, 8, 32, 64, 128)),
    "small": dict(n_train=8_192, n_val=1_024, in_features=784, hidden=(256, 256), ks=(1, 4, 16)),
    "tiny": dict(n_train=256, n_val=64, in_features=16, hidden=(8,), ks=(1, 2)),
}
NUM_CLASSES = 10
H200_BF16_PEAK_TFLOPS = 790.0  # an 8192^3 bf16 matmul through PyTorch on the workplace's H200 (KINDS.md)


@dataclass
class Row:
    name: str
    trials: int
    epochs: int
    seconds: float
    flops_per_trial_epoch: float

    @property
    def per_trial_epoch(self) -> float:
        return self.seconds / (self.trials * self.epochs)


def synthetic(n_train: int, n_val: int, in_features: int, device: torch.device, seed: int = 0) -> Dataset:
    """Random inputs with labels from a random linear teacher, so the loss can go down."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, in_features, generator=g)
    y = (x @ torch.randn(in_features, NUM_CLASSES, generator=g)).argmax(1)
    tr, va = Split(x[:n_train], y[:n_train]), Split(x[n_train:], y[n_train:])
    return Dataset(tr, va, va, NUM_CLASSES).to(device)


def n_params(in_features: int, hidden: Sequence[int]) -> int:
    widths = [in_features, *hidden, NUM_CLASSES]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=False))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object]) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def textbook(data: Dataset, hidden: Sequence[int], hp: Hparams, lr: float, batch_size: int, epochs: int) -> None:
    """One trial the way Optuna's PyTorch example trains it."""
    device = data.train.x.device
    seed_everything(0)
    model = MLP(data.in_features, data.num_classes, tuple(hidden), hp.dropout).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    cpu = data.to("cpu")
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(cpu.train.x, cpu.train.y), batch_size=batch_size, shuffle=True
    )
    val_set = torch.utils.data.TensorDataset(cpu.val.x, cpu.val.y)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size)
    for _ in range(epochs):
        model.train()
        for xb, yb in train_loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in val_loader:
                correct += (model(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
        _ = correct / len(val_set)


def sequential(data: Dataset, hidden: Sequence[int], hp: Hparams, settings: TrainSpec) -> None:
    seed_everything(0)
    model = MLP(data.in_features, data.num_classes, tuple(hidden), hp.dropout).to(data.train.x.device)
    train(model, data, hp, settings, seed=0)


def population(data: Dataset, hidden: Sequence[int], hp: Hparams, settings: TrainSpec, k: int, amp: bool) -> None:
    trainer = PopulationTrainer(data, settings, NetworkSpec(hidden=tuple(hidden)), amp=amp)
    trainer.add(list(range(k)), [hp] * k, list(range(k)))
    for _ in range(settings.epochs):
        trainer.train_epoch()


def size_name(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else "small" if args.small else "mnist1d" if args.mnist1d else "full"


def run(args: argparse.Namespace) -> list[Row]:
    size = dict(SIZES[size_name(args)])
    device = torch.device(args.device)
    hidden = tuple(args.hidden) if args.hidden else size["hidden"]
    ks = tuple(args.ks) if args.ks else size["ks"]
    data = synthetic(size["n_train"], size["n_val"], size["in_features"], device)
    flops = 6.0 * n_params(size["in_features"], hidden) * size["n_train"]
    hp = Hparams(dropout=(0.2,) + (0.5,) * len(hidden), weight_decay=1e-4, momentum=0.9)
    settings = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, base_lr=0.01, device=str(device))
    warm = TrainSpec(epochs=1, batch_size=args.batch_size, base_lr=0.01, device=str(device))
    warm_data = synthetic(args.batch_size * 4, 64, size["in_features"], device)

    lr, bs, n, amp = settings.base_lr, args.batch_size, args.trials, not args.no_amp
    methods: list[tuple[str, int, Callable[[], object], Callable[[], object]]] = [
        (
            "(a) textbook DataLoader",
            n,
            lambda: [textbook(data, hidden, hp, lr, bs, args.epochs) for _ in range(n)],
            lambda: textbook(warm_data, hidden, hp, lr, bs, 1),
        ),
        (
            "(b) sweeper train.train",
            n,
            lambda: [sequential(data, hidden, hp, settings) for _ in range(n)],
            lambda: sequential(warm_data, hidden, hp, warm),
        ),
    ]
    for k in ks:
        methods.append(
            (
                f"(c) population K={k}",
                k,
                lambda k=k: population(data, hidden, hp, settings, k, amp),
                lambda k=k: population(warm_data, hidden, hp, warm, k, amp),
            )
        )
    if args.warmup:  # first-call costs (CUDA context, kernel selection) are not a trial's cost
        for _, _, _, warm_up in methods:
            warm_up()
    best = [float("inf")] * len(methods)
    for _ in range(args.repeat):  # rounds over all methods: a neighbour's burst hits one round, not one method
        for i, (_, _, fn, _) in enumerate(methods):
            best[i] = min(best[i], _timed(device, fn))
    return [Row(name, trials, args.epochs, s, flops) for (name, trials, _, _), s in zip(methods, best, strict=True)]


def table(rows: list[Row], args: argparse.Namespace, trial_epochs: int) -> str:
    base = rows[0].per_trial_epoch
    head = (
        f"device={args.device} size={size_name(args)} batch={args.batch_size} timed_epochs={args.epochs} "
        f"repeat={args.repeat} torch={torch.__version__} python={platform.python_version()} "
        f"threads={torch.get_num_threads()}\n"
        f"trials/hour assume {trial_epochs} epochs per trial; ratio = speed vs (a)\n"
    )
    peak = args.peak_tflops
    if args.device.startswith("cuda"):
        head += f"gpu={torch.cuda.get_device_name(args.device)}\n"
    if peak:
        head += f"%peak = TFLOP/s / {peak:g} (the bf16 peak); (a) and (b) train in fp32, (c) in bf16\n"
    lines = [f"{'method':<26}{'s/trial-epoch':>14}{'trials/hour':>13}{'ratio':>8}{'TFLOP/s':>10}"]
    lines[0] += f"{'%peak':>8}" if peak else ""
    for r in rows:
        t = r.per_trial_epoch
        tflops = r.flops_per_trial_epoch / t / 1e12
        lines.append(f"{r.name:<26}{t:>14.4f}{3600 / (t * trial_epochs):>13.1f}{base / t:>8.2f}{tflops:>10.4f}")
        lines[-1] += f"{100 * tflops / peak:>8.2f}" if peak else ""
    return head + "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="CPU-sized: 8192 x 784, 784-256-256-10, K in 1,4,16")
    p.add_argument("--tiny", action="store_true", help="seconds-sized, for the test suite")
    p.add_argument("--mnist1d", action="store_true", help="the MNIST-1D study network: 3400 x 40, 40-512-512-10")
    p.add_argument("--ks", type=int, nargs="+", help="population sizes to time")
    p.add_argument("--hidden", type=int, nargs="+", help="hidden widths (default per size)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per method")
    p.add_argument("--trials", type=int, default=1, help="trials timed for (a) and (b)")
    p.add_argument("--trial-epochs", type=int, default=15, help="epochs per trial for trials/hour")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all methods; each keeps its fastest")
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up runs before timing [default: 1 on CUDA]")
    p.add_argument("--no-amp", action="store_true", help="population in fp32 on CUDA too (no bf16 autocast)")
    p.add_argument("--peak-tflops", type=float, help="bf16 peak for %%peak [default: 790 on CUDA, none on CPU]")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args(argv)
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = H200_BF16_PEAK_TFLOPS
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup is None:
        args.warmup = 1 if args.device.startswith("cuda") else 0
    out = table(run(args), args, args.trial_epochs)
    print(out, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(out)
    return out


if __name__ == "__main__":
    main()
