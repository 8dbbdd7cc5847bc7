"""Search quality at equal budget: sweeper's defaults against a textbook Optuna sweep, random search and Ray Tune.

    python benchmarks/search_quality.py --jobs 2                 # full run: 3 tasks x 10 seeds (about 1 h)
    python benchmarks/search_quality.py --quick                  # CI smoke run: 1 seed, tiny sweeps (< 2 min)
    python benchmarks/search_quality.py --report-only            # re-make the tables and plot from the JSON
    python benchmarks/search_quality.py --tasks digits --methods sweeper textbook --seeds 0 1 2 --trials 10
    python benchmarks/search_quality.py --methods +adamw +smoothing +mixup +clip +ema +early-stop \
        --tasks mnist1d digits tabular --jobs 2 --out results/search_extensions      # issue 19's additions
    python benchmarks/search_quality.py --tasks mnist1d-cnn --methods cnn-study --jobs 2 --out results/search_cnn

Writes ``results/search_quality.txt`` (tables), ``.json`` (every sweep's trials) and ``.png`` (anytime curves).

Tasks, none downloaded: MNIST-1D's standard split (official 1,000 test samples), scikit-learn's digits (random
split by the seed) and a tabular ``.npz`` with its own test split (``make_classification``, features on scales
from 0.01 to 100 with offsets, written to a temporary folder). Per task and seed (the seed fixes the
validation carve, the same rows for every method):

  sweeper   ``sweeper.api.launch`` on a minimal study file (name, seed, trials, data, hidden, epochs, batch
            size: every other setting is sweeper's default), one torch thread, no tracking. Its process CPU
            time, without the retraining that scores its best trial on test, is the budget B.
  sweeper-v0  the same with the defaults before this benchmark written out (no literature start points,
            pruning after 2 epochs, standardize always): what the new defaults changed, paired.
  +adamw, +smoothing, +mixup, +clip, +ema, +early-stop   the minimal study file plus one addition searched
            (``VARIANTS``), the same trial budget as sweeper (its CPU time is in the CPU s column).
  +population  the minimal study file with ``train.population: 4`` (4 trials stacked, one worker).
  +4-workers  the minimal study file run by 4 worker processes sharing the study (the same 20-trial budget):
            quality at a fixed trial budget only (trials read back from the study; its budget column is wall s).
  cnn-study   on the mnist1d-cnn task: the space of studies/mnist1d_cnn.yaml (channel dropout, optimizer,
            label smoothing) vs the CNN with sweeper's default space.
  textbook  ``benchmarks/textbook_sweep.py``'s loop (TPE, median pruner, DataLoader) until B CPU seconds.
  random    the same loop with Optuna's RandomSampler and no pruner, until B CPU seconds.
  ray-tune  Ray Tune, ASHA + OptunaSearch over the same space, one trial at a time on 1 CPU, for B seconds
            of wall clock (``time_budget_s``).

Every method selects the complete trial with the best validation accuracy; the tables give that trial's test
accuracy (mean, 10th percentile, worst over seeds) and its paired difference to sweeper's (bootstrap 95 % CI).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results" / "search_quality"
#: sweeper variants: what each adds to the minimal study file (sweeper-v0: the defaults before this benchmark,
#: written out; the others: one addition of issue 19 searched beside the default space, and on the CNN task the
#: space of studies/mnist1d_cnn.yaml)
VARIANTS: dict[str, dict[str, Any]] = {
    "sweeper-v0": {"warm_start": "none", "pruner": {"warmup_epochs": 2}, "data": {"standardize": True}},
    "+adamw": {"space": {"optimizer": ["sgd", "adamw"]}},
    "+smoothing": {"space": {"label_smoothing": [0.0, 0.2]}},
    "+mixup": {"space": {"mixup_alpha": {"low": 0.1, "high": 0.4, "optional": True}}},
    "+clip": {"space": {"grad_clip": {"low": 0.5, "high": 10.0, "optional": True}}},
    "+ema": {"space": {"ema_decay": {"low": 0.9, "high": 0.999, "optional": True}}},
    "+early-stop": {"train": {"early_stopping_patience": 5}},
    # issue 29: Gaussian dropout (Srivastava et al. 2014, sec. 10), searched beside Bernoulli, and instead of it
    "+gaussian": {"space": {"dropout_kind": ["bernoulli", "gaussian"]}},
    "+gauss-only": {"space": {"dropout_kind": "gaussian"}},
    "+population": {"train": {"population": 4}},  # issue 17's lever: 4 trials stacked, more trials per CPU second
    "+4-workers": {},  # issue 17's lever: the minimal study file run by 4 worker processes (api.launch workers=4)
    # issue 17's levers: the literature's learning-rate scale (10-100x, not 1-100x); selection on the last 3 epochs
    "+lr10": {"space": {"lr_scale": {"low": 10.0, "high": 100.0, "log": True}}},
    "+last3": {"metric_epochs": 3},
    "+lr10-last3": {"space": {"lr_scale": {"low": 10.0, "high": 100.0, "log": True}}, "metric_epochs": 3},
    "+val-loss": {"metric": "val_loss"},  # issue 17's "or validation loss": select (and prune) on it
    "cnn-study": {"space": {"dropout_conv": [0.0, 0.3], "optimizer": ["sgd", "adamw"], "label_smoothing": [0.0, 0.2]}},
}
METHODS = ("sweeper", *VARIANTS, "textbook", "random", "ray-tune")
TASKS: dict[str, dict[str, Any]] = {  # epochs at --epochs-scale 1; scale: StandardScaler for the textbook's inputs
    "mnist1d": {"data": {"dataset": "mnist1d_standard"}, "hidden": [512, 512], "epochs": 20, "scale": False},
    "digits": {"data": {"dataset": "digits"}, "hidden": [256, 256], "epochs": 20, "scale": True},
    "tabular": {"data": {"dataset": "file", "split": "given"}, "hidden": [256, 256], "epochs": 20, "scale": True},
    # sweeper and its variants only (the peers' loops build MLPs): the 1-D CNN of studies/mnist1d_cnn.yaml
    "mnist1d-cnn": {
        "data": {"dataset": "mnist1d_standard"},
        "hidden": [128],
        "epochs": 20,
        "scale": False,
        "network": {"type": "cnn1d", "channels": [32, 32], "kernel_size": 5},
    },
}
HEADLINE = {  # what a run without --methods / --tasks measures: README's headline table
    "methods": ["sweeper", "sweeper-v0", "textbook", "random", "ray-tune"],
    "tasks": ["mnist1d", "digits", "tabular"],
}
FULL = {"trials": 20, "seeds": 10, "jobs": 2}  # the default full run, for the time estimate


def make_tabular(path: Path) -> Path:
    """4 classes, 20 features (10 informative), scales 0.01 to 100 with offsets; 3,000 train / 1,000 test."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(
        n_samples=4000, n_features=20, n_informative=10, n_redundant=4, n_classes=4, class_sep=1.0, flip_y=0.03,
        random_state=1234,
    )  # fmt: skip
    rng = np.random.default_rng(1234)
    scales = rng.permutation(np.logspace(-2, 2, x.shape[1]))
    x = x * scales + rng.uniform(-5, 5, x.shape[1]) * scales * 10
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=1000, random_state=1234, stratify=y)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def study_file(task: str, seed: int, trials: int, epochs: int, workdir: Path, variant: str | None = None) -> Path:
    """The minimal study file a user writes: every sampler, pruner and space setting is sweeper's default
    (``variant``: with that variant's additions, ``VARIANTS``)."""
    import yaml

    cfg = TASKS[task]
    data = dict(cfg["data"])
    if task == "tabular":
        data["path"] = str(make_tabular(workdir / "tabular.npz"))
    spec = {
        "name": f"sq-{task}-{seed}" + (f"-{variant.strip('+')}" if variant else ""),
        "seed": seed,
        "trials": trials,
        "data": data,
        "network": {**cfg.get("network", {}), "hidden": cfg["hidden"]},
        "train": {"epochs": epochs, "batch_size": 128},
    }
    for key, value in VARIANTS.get(variant or "", {}).items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    path = workdir / f"study{'-' + variant if variant else ''}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_unit(
    task: str, seed: int, methods: list[str], trials: int, epochs: int, ray_min: float, cpu_min: float = 0.0
) -> list[dict[str, Any]]:
    """All methods on one task and seed, in this process (one torch thread): sweeper first, its CPU time is B."""
    import optuna
    import search_methods as sm
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sm.warm_up()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = study_file(task, seed, trials, epochs, work)
        sets = sm.textbook_data(path, scale=False)
        info = {"task": task, "seed": seed, "epochs": epochs, "hidden": TASKS[task]["hidden"]}
        info["sizes"] = [len(s) for s in sets]
        rec = sm.run_sweeper(path, trials, work)
        out.append({**info, "method": "sweeper", **rec})
        budget = rec["budget_s"]
        job = {"study_file": path, "seed": seed, "epochs": epochs, "shape": sm.shape(sets), **TASKS[task]}
        for method in methods:
            if method in VARIANTS:
                workers = 4 if method == "+4-workers" else 1
                path = study_file(task, seed, trials, epochs, work, variant=method)
                rec = sm.run_sweeper(path, trials, work, workers)
                out.append({**info, "method": method, **rec})
            elif method in ("textbook", "random"):
                out.append({**info, "method": method, **sm.run_textbook(job, method, max(budget, cpu_min))})
            elif method == "ray-tune":
                out.append({**info, "method": method, **sm.run_ray(job, max(budget, ray_min), work)})
    return out


def run_all(args: argparse.Namespace, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (task, seed) unit, ``--jobs`` at a time in spawned processes; the JSON is rewritten after each."""
    others = [m for m in args.methods if m != "sweeper"]
    epochs = {t: max(1, round(TASKS[t]["epochs"] * args.epochs_scale)) for t in args.tasks}
    floors = (args.ray_min_budget, args.cpu_min_budget)
    units = [(t, s, others, args.trials, epochs[t], *floors) for s in args.seeds for t in args.tasks]
    records: list[dict[str, Any]] = []

    def done(recs: list[dict[str, Any]]) -> None:
        records.extend(recs)
        for r in recs:
            sel = r["selected"] or {"test": float("nan")}
            print(
                f"  {r['task']:<11} seed {r['seed']:<2} {r['method']:<11} {len(r['trials']):>3} trials  "
                f"B {r['budget_s']:6.1f} s  wall {r['wall_s']:6.1f} s  test {sel['test']:.4f}",
                flush=True,
            )
        save(args.out, meta, records)

    if args.jobs == 1:
        for unit in units:
            done(run_unit(*unit))
        return records
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the children inherit it
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(run_unit, *u) for u in units]):
            done(fut.result())
    return records


def save(out: Path, meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "sweeps": records}, default=str) + "\n")


# --- report -----------------------------------------------------------------------------------------------


def anytime(trials: list[dict[str, Any]], grid: np.ndarray) -> np.ndarray:
    """Test accuracy of the best-validation complete trial finished by each time in ``grid`` (NaN before any)."""
    curve = np.full(len(grid), np.nan)
    best = -np.inf
    for t in sorted(trials, key=lambda t: t["t"]):
        if t["state"] == "complete" and t["val"] is not None and t["val"] > best:
            best = t["val"]
            curve[grid >= t["t"]] = t["test"]
    return curve


def bootstrap_ci(d: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    means = d[np.random.default_rng(seed).integers(0, len(d), (n, len(d)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def by(records: list[dict[str, Any]], task: str, method: str) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in records if r["task"] == task and r["method"] == method}


def test_of(r: dict[str, Any]) -> float:
    return float("nan") if r["selected"] is None else float(r["selected"]["test"])


def task_table(records: list[dict[str, Any]], task: str) -> str:
    warnings.filterwarnings("ignore", "Mean of empty slice|All-NaN", RuntimeWarning)  # a sweep selected nothing
    ref = by(records, task, "sweeper")
    head = (
        f"{'method':<11} {'sweeps':>6} {'trials c/p/cut per sweep':>25} {'budget s':>13} {'CPU s':>6} {'test mean':>9} "
        f"{'p10':>7} {'worst':>7} {'val mean':>8}   {'test - sweeper, mean [95% CI]':<30}"
    )
    lines = [head, "-" * len(head)]
    for method in METHODS:
        runs = by(records, task, method)
        if not runs:
            continue
        tests = np.array([test_of(r) for r in runs.values()])
        vals = np.array([np.nan if r["selected"] is None else r["selected"]["val"] for r in runs.values()])
        n = {s: np.mean([sum(t["state"] == s for t in r["trials"]) for r in runs.values()]) for s in STATES}
        budget = np.mean([r["budget_s"] for r in runs.values()])
        used = np.mean([r.get("used_s", r["budget_s"]) for r in runs.values()])
        diff = ""
        paired = [s for s in runs if s in ref]
        if method != "sweeper" and paired:
            d = np.array([test_of(runs[s]) - test_of(ref[s]) for s in paired])
            d = d[np.isfinite(d)]
            if len(d):
                lo, hi = bootstrap_ci(d)
                diff = f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] n={len(d)}"
        trials = f"{n['complete']:.1f}/{n['pruned']:.1f}/{n['cut']:.1f}"
        clock = runs[next(iter(runs))]["clock"]
        lines.append(
            f"{method:<11} {len(runs):>6} {trials:>25} {budget:>8.1f} {clock:<4} {used:>6.1f} "
            f"{np.nanmean(tests):>9.4f} {np.nanpercentile(tests, 10):>7.4f} {np.nanmin(tests):>7.4f} "
            f"{np.nanmean(vals):>8.4f}   {diff}"
        )
    refits = {s: r["refit_test"] for s, r in ref.items() if r.get("refit_test") is not None}
    if refits:  # beside, never instead of, the selected trial's number
        d = np.array([refits[s] - test_of(ref[s]) for s in refits])
        lo, hi = bootstrap_ci(d)
        lines.append(
            f"sweeper's best settings refit on train + val (`sweeper refit`, not in B, not a selection): test mean "
            f"{np.mean(list(refits.values())):.4f}, p10 {np.percentile(list(refits.values()), 10):.4f}; "
            f"- its selected trial {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] n={len(d)}"
        )
    return "\n".join(lines)


STATES = ("complete", "pruned", "cut")


def header(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    m = meta["machine"]
    lines = [
        f"Search quality at equal budget ({meta['date']}; {' '.join(meta['argv'])})",
        f"machine {m['node']}: {m['cores']} cores, {m['platform']}, python {m['python']}, torch {m['torch']}, "
        f"optuna {m['optuna']}, ray {m['ray']}; 1 torch thread per sweep, --jobs {meta['jobs']} sweeps at once",
        "Budget B per task and seed = sweeper's process CPU time (without its best trial's test retraining);",
        "  textbook and random stop at B process CPU seconds (the trial running then is cut: not a candidate);",
        "  ray-tune gets B seconds of WALL clock (TuneConfig(time_budget_s=B), reuse_actors=True; ray.init is not",
        "  counted, its first worker's start is), one trial at a time on 1 CPU; ASHA max_t=epochs, grace 1,",
        "  reduction 4; OptunaSearch's TPE. Its anytime curve is in wall seconds, the others' in CPU seconds.",
        "CPU s: process CPU time used (sweeper: B; ray-tune: its trial actor's process, start-up included).",
        "Selection: the complete trial with the best validation accuracy (the last epoch's); its test accuracy",
        "  is reported, never used for selection. Ray: ASHA-stopped trials are not candidates (like pruned ones).",
        "Inputs: the textbook, random and ray-tune sweeps get raw MNIST-1D features and StandardScaler (fit on",
        "  train) for digits and tabular, what a typical user does; sweeper does what its defaults do (below).",
        "sweeper's study file per task: name, seed, trials, data, network.hidden, train.epochs, batch_size 128;",
        "  everything else (sampler, pruner, space, standardization, ...) is sweeper's default, as listed per task.",
        "textbook and random share their first 10 configurations (TPE's random start-up, same sampler seed).",
        "Paired difference: per seed, method's test accuracy - sweeper's; bootstrap 95 % CI (10,000 resamples).",
        "",
    ]
    if meta.get("cpu_min_budget"):
        lines.insert(-1, f"textbook and random got at least {meta['cpu_min_budget']:.0f} CPU s (--cpu-min-budget).")
    if meta.get("ray_min_budget"):
        lines.insert(
            -1, f"ray-tune got at least {meta['ray_min_budget']:.0f} s (--ray-min-budget): not B where B was less."
        )
    for task in TASKS:
        runs = [r for r in records if r["task"] == task]
        if runs:
            r, bs = runs[0], [x["budget_s"] for x in runs if x["method"] == "sweeper"]
            net = TASKS[task].get("network", {})
            kind = f"CNN {'-'.join(map(str, net['channels']))} + head" if net else "MLP"
            lines.append(
                f"{task}: train/val/test {'/'.join(map(str, r['sizes']))}, {kind} {'-'.join(map(str, r['hidden']))}, "
                f"{r['epochs']} epochs, batch 128; B {min(bs):.1f} to {max(bs):.1f} CPU s over seeds"
            )
            ours = next(x for x in runs if x["method"] == "sweeper").get("defaults", {})
            lines.append("  sweeper's defaults: " + "; ".join(f"{k} {v}" for k, v in ours.items()))
    return "\n".join(lines)


def full_budget(r: dict[str, Any]) -> float:
    """A sweeper sweep's CPU time scaled to the default full run: fixed start-up + trials x epochs at its rate."""
    ends = [t["t"] for t in r["trials"]]
    per_trial = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0]
    fixed = max(0.0, r["budget_s"] - per_trial * len(ends))
    return fixed + per_trial / r["epochs"] * TASKS[r["task"]]["epochs"] * FULL["trials"]


def estimate(records: list[dict[str, Any]]) -> str:
    """Extrapolate the default full run (quiet machine) from this run's sweeper sweeps; pruning makes it less."""
    total, parts = 0.0, []
    for task in TASKS:
        budgets = [full_budget(r) for r in records if r["task"] == task and r["method"] == "sweeper"]
        if budgets:
            b = float(np.mean(budgets))
            unit = 4 * b + b / FULL["trials"] + 10  # four sweeps, sweeper's test retraining, data and Ray start-up
            total += unit * FULL["seeds"] / FULL["jobs"]
            parts.append(f"{task} B ~{b:.0f} s")
    return f"expected full default run (10 seeds, --jobs 2): ~{total / 60:.0f} min ({', '.join(parts)})"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in records)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        end = max(r["budget_s"] for r in records if r["task"] == task)
        grid = np.linspace(0, end, 300)
        for method in METHODS:
            runs = by(records, task, method)
            if not runs:
                continue
            curves = np.array([anytime(r["trials"], grid) for r in runs.values()])
            mean, lo, hi = np.nanmean(curves, 0), *np.nanpercentile(curves, [10, 90], axis=0)  # NaN: no trial yet
            unit = "wall s" if method == "ray-tune" else "CPU s"
            ax.plot(grid, mean, label=f"{method} ({unit})")
            ax.fill_between(grid, lo, hi, alpha=0.2)
        ax.set(title=task, xlabel="seconds (budget B at the right end)", ylabel="selected trial's test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Best-so-far (by validation) trial's test accuracy: mean over seeds, 10-90 % band")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(out: Path) -> str:
    data = json.loads(out.with_suffix(".json").read_text())
    records = data["sweeps"]
    parts = [header(data["meta"], records)]
    for task in TASKS:
        if any(r["task"] == task for r in records):
            parts.append(f"\n== {task} ==\n" + task_table(records, task))
    parts.append("\n" + estimate(records))
    text = "\n".join(parts) + "\n"
    out.with_suffix(".txt").write_text(text)
    plot(records, out.with_suffix(".png"))
    return text


def machine() -> dict[str, Any]:
    import optuna
    import ray
    import torch

    return {
        "node": platform.node(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "ray": ray.__version__,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=HEADLINE["tasks"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=HEADLINE["methods"], help="sweeper always runs")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--trials", type=int, default=FULL["trials"], help="sweeper's trial budget")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies every task's epochs")
    p.add_argument("--jobs", type=int, default=1, help="sweeps in parallel processes (one torch thread each)")
    p.add_argument("--ray-min-budget", type=float, default=0.0, help="wall s Ray gets at least (--quick: 20)")
    p.add_argument("--cpu-min-budget", type=float, default=0.0, help="CPU s textbook/random get at least (--quick: 5)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 4 trials, 2 epochs, temp output")
    p.add_argument("--report-only", action="store_true", help="re-make the txt and png from the JSON")
    p.add_argument("--out", type=Path, help=f"output path without suffix [{RESULTS}]")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.trials, args.epochs_scale, args.ray_min_budget = args.seeds[:1], 4, 0.1, 20.0
        args.cpu_min_budget = 5.0  # a cold first trial must not be cut: the smoke run checks every method selects one
    args.out = args.out or (Path(tempfile.gettempdir()) / "search_quality_quick" if args.quick else RESULTS)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if not args.report_only:
        import torch

        torch.set_num_threads(1)
        meta = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "argv": ["search_quality.py", *sys.argv[1:]],
            "jobs": args.jobs,
            "ray_min_budget": args.ray_min_budget,
            "cpu_min_budget": args.cpu_min_budget,
            "machine": machine(),
        }
        print(f"{len(args.tasks) * len(args.seeds)} units (task x seed) -> {args.out}.{{txt,json,png}}", flush=True)
        start = time.perf_counter()
        records = run_all(args, meta)
        print(f"done in {time.perf_counter() - start:.0f} s wall; {estimate(records)}", flush=True)
    print(report(args.out))


if __name__ == "__main__":
    main()
