"""Everything issue 27 asks a GPU to show, in one call: run by ``scripts/gpu_acceptance.sh`` (which installs the
carried wheels and sets the paths), one PASS / FAIL / SKIP line per check, a summary, exit 1 if any check failed.

Order: the device's facts and sweeper's imports; the CUDA tests (``pytest -m cuda tests/test_cuda.py``); the
user's paths end to end on SQLite + a local MLflow store (the README's main job, ``--population 20``,
``--workers 4 --gpus all``); a trial that runs out of GPU memory; the best model reloaded in a process that
sees no GPU; ``benchmarks/bench.py`` on the reference workload and the MNIST-1D network. Every step has a time
cap inside one budget (``--budget-s``, 8 minutes on a GPU), keeping each later step's minimum free, so a slow
step costs its own figures only. ``--dry-run``: the same steps on the CPU at seconds-sized settings (CI runs it);
what needs CUDA runs as far as the CPU allows and reports SKIP (no CUDA), or FAIL where its code path broke.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpu_paths import CPU_MAIN_JOB, dry_study, launch_path, oom_path, result_of, run_cmd

Outcome = tuple[str, str]


@dataclass
class Check:
    name: str
    status: str
    detail: str
    seconds: float


class Report:
    def __init__(self, out_dir: Path, budget_s: float) -> None:
        self.out_dir, self.checks, self.header = out_dir, [], []  # type: ignore[var-annotated]
        self.start, self.budget_s = time.monotonic(), budget_s
        self.extra: list[str] = []

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def step(self, name: str, cap: float, reserve: float, minimum: float, fn: Callable[[float], Outcome]) -> None:
        """Run ``fn(timeout)`` with at most ``cap`` seconds, leaving ``reserve`` for the steps after it."""
        timeout = min(cap, self.left() - reserve)
        start = time.monotonic()
        if timeout < minimum:
            status, detail = "SKIP", f"time budget spent ({self.left():.0f} s left, this step needs {minimum:.0f})"
        else:
            print(f"\n=== {name} (at most {timeout:.0f} s)", flush=True)
            try:
                status, detail = fn(timeout)
            except Exception as e:  # one broken check must not hide the others
                status, detail = "FAIL", f"{type(e).__name__}: {e}"
        check = Check(name, status, detail, time.monotonic() - start)
        self.checks.append(check)
        print(f"{status} {name}: {detail} [{check.seconds:.0f} s]", flush=True)

    def text(self) -> str:
        lines = [*self.header, ""]
        lines += [f"{c.status:<4} {c.name}: {c.detail} [{c.seconds:.0f} s]" for c in self.checks]
        counts = {s: sum(c.status == s for c in self.checks) for s in ("PASS", "FAIL", "SKIP")}
        width = max(len(c.name) for c in self.checks) if self.checks else 10
        lines += ["", "summary", f"{'check':<{width}}  status  seconds"]
        lines += [f"{c.name:<{width}}  {c.status:<6}  {c.seconds:7.0f}" for c in self.checks]
        total = time.monotonic() - self.start
        lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {total:.0f} s in all")
        return "\n".join(lines + self.extra) + "\n"

    def write(self) -> Path:
        path = self.out_dir / "gpu_acceptance.txt"
        path.write_text(self.text())
        return path

    @property
    def failed(self) -> bool:
        return any(c.status == "FAIL" for c in self.checks)


def bench_rows(table: str) -> list[dict[str, float | str]]:
    """bench.py's rows: method, s/trial-epoch, trials/hour, ratio, TFLOP/s[, %peak]."""
    rows: list[dict[str, float | str]] = []
    for line in table.splitlines():
        if line.startswith("("):
            name, numbers = line[:26].strip(), [float(v) for v in line[26:].split()]
            row: dict[str, float | str] = dict(zip(("s", "per_hour", "ratio", "tflops", "peak"), numbers, strict=False))
            rows.append({"name": name, **row})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, seconds-sized (CI)")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--work", type=Path, default=Path.cwd(), help="where the studies' files go")
    p.add_argument("--out-dir", type=Path, default=None, help="reports [default: results/]")
    p.add_argument("--budget-s", type=float, default=None, help="time for all steps [default: 450 GPU, 300 dry run]")
    args = p.parse_args(argv)
    root, work, dry = args.root.resolve(), args.work.resolve(), args.dry_run
    out = (args.out_dir or root / "results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, args.budget_s or (300.0 if dry else 450.0))
    py, scripts = sys.executable, root / "scripts"

    wheels = root / ".whl"
    cmd = [py, str(scripts / "gpu_probes.py"), "facts"] + ([str(wheels)] if wheels.is_dir() else [])
    try:
        facts = result_of(run_cmd(cmd, cwd=work, timeout=120, tag="facts"))
    except RuntimeError as e:  # not even torch imports: say so in the report, nothing else can run
        facts = {"failed": {"the facts probe": str(e)[-300:]}, "host": "?", "python": "?", "torch": "?"}
    cuda = bool(facts.get("cuda"))
    report.header = [
        f"gpu_acceptance {'--dry-run (CPU)' if dry else '(CUDA)'}, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}",
        f"host {facts['host']}; python {facts['python']}; torch {facts['torch']}; CUDA available: {cuda}",
        f"device {facts.get('gpu', 'none')} x{facts.get('gpus', 0)}, {facts.get('gpu_memory_gib', '-')} GiB; "
        f"CUDA runtime {facts.get('cuda_runtime', '-')}; driver {facts.get('driver', '-')}",
    ]
    print("\n".join(report.header), flush=True)
    if (not cuda and not dry) or "versions" not in facts:
        why = facts["failed"] if "versions" not in facts else "no CUDA device visible; on a CPU machine run --dry-run"
        report.step("device", 1, 0, 0, lambda t: ("FAIL", str(why)))
        print(f"\nreport: {report.write()}")
        return 1
    device = "cuda" if not dry else "cpu"
    if cuda and not dry:
        try:
            run_cmd(["nvidia-smi"], cwd=work, timeout=30, tag="nvidia-smi")
        except OSError as e:
            print(f"nvidia-smi: {e}")

    def imports(timeout: float) -> Outcome:  # read off the facts probe
        if facts["failed"]:
            return "FAIL", f"cannot import {facts['failed']}"
        v = facts["versions"]
        detail = ", ".join(f"{m} {v[m]}" for m in ("torch", "optuna", "mlflow", "sqlalchemy", "pydantic", "numpy"))
        if "carried" in facts:
            left_out = ", ".join(facts["not_carried"]) or "none"
            detail += f"; {facts['carried']} carried wheels, needs left out: {left_out}"
            detail += f"; version conflicts: {'; '.join(facts['conflicts']) or 'none'}"
        return "PASS", detail

    def cuda_tests(timeout: float) -> Outcome:
        cmd = [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
        ran = run_cmd(cmd, cwd=root, timeout=timeout, tag="pytest")
        last = (ran.output.strip().splitlines() or ["no output"])[-1].strip("= ")
        if ran.timed_out:
            return "FAIL", f"timed out after {ran.seconds:.0f} s ({last})"
        if dry:  # every test must be collected and skipped for want of CUDA, not fail to import
            ok = ran.code == 0 and " skipped" in last and "passed" not in last and "needs CUDA" in ran.output
            return ("SKIP" if ok else "FAIL"), f"(no CUDA) {last}"
        return ("PASS" if ran.code == 0 else "FAIL"), last

    study = others = root / "studies" / "mnist1d_mlp.yaml"
    if dry:  # the same file and keys, seconds-sized; no refit beside the main job's
        others = dry_study(study, work / "studies" / "no_refit.yaml", refit=False)
        study = dry_study(study, work / "studies" / "mnist1d_mlp.yaml")
    trials = ["--trials", "4" if dry else "20"]
    paths = [  # folder, the launch's options; a dry run stacks 4 and starts 2 workers (2 CPU cores)
        ("main", trials),
        ("population", [*trials, "--population", "4" if dry else "20"]),
        ("workers", [*trials, "--workers", "2" if dry else "4", "--gpus", "all"]),
    ]
    launched: dict[str, dict[str, object]] = {}

    def user_path(args_: list[str], folder: str) -> Callable[[float], Outcome]:
        def check(timeout: float) -> Outcome:
            file = study if folder == "main" else others
            status, detail, info = launch_path(
                file, args_, workdir=work / folder, timeout=timeout, device=device, name="mnist1d-mlp"
            )
            launched[folder] = info
            return status, detail + (f" | {CPU_MAIN_JOB}" if folder == "main" else "")

        return check

    def oom(timeout: float) -> Outcome:
        status, detail = oom_path(work / "oom", timeout=timeout, cuda=cuda)
        if not cuda and status == "PASS":
            return "SKIP", f"(no CUDA) its code path ran on the CPU, the OOM simulated: {detail}"
        return status, detail

    def cpu_load(timeout: float) -> Outcome:
        main_run = launched.get("main")
        if not main_run or main_run.get("test") is None or main_run.get("printed_test") is None:
            return "FAIL", "the main job left no best model and test accuracy to compare"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        cmd = [py, str(scripts / "gpu_probes.py"), "load", str(work / "main"), "mnist1d-mlp"]
        r = result_of(run_cmd(cmd, cwd=work, timeout=timeout, env=env, tag="load"))
        stored, printed = r["stored"]["test_accuracy"], main_run["printed_test"]
        detail = (
            f"best_model loaded with mlflow.pytorch.load_model, GPU visible: {r['cuda_visible']}; test accuracy on "
            f"{r['n_test']} raw inputs {r['accuracy']:.4f}, printed {printed:.4f}, stored {stored:.6f} "
            f"(from a {device} trial)"
        )
        ok = not r["cuda_visible"] and abs(r["accuracy"] - stored) <= 1 / r["n_test"] + 1e-9
        return ("PASS" if ok and f"{r['accuracy']:.4f}" == f"{printed:.4f}" else "FAIL"), detail

    def bench(flags: list[str], out_name: str) -> Callable[[float], Outcome]:
        def check(timeout: float) -> Outcome:
            table = out / out_name
            cmd = [py, str(root / "benchmarks" / "bench.py"), "--device", device, *flags, "--out", str(table)]
            ran = run_cmd(cmd, cwd=work, timeout=timeout, tag="bench")
            if ran.code != 0 or not table.exists():
                return "FAIL", f"{'timed out' if ran.timed_out else f'exit {ran.code}'} after {ran.seconds:.0f} s"
            report.extra += ["", f"{out_name} ({' '.join(flags)}):", table.read_text().rstrip()]
            rows = bench_rows(table.read_text())
            best = max(rows[2:], key=lambda r: r["ratio"])
            detail = f"{len(rows)} methods timed in {ran.seconds:.0f} s; sweeper's trainer {rows[1]['ratio']:.2f}x the "
            detail += f"textbook loop; best: {best['name']} {best['ratio']:.1f}x, {best['tflops']:.2f} TFLOP/s"
            return "PASS", detail + (f" ({best['peak']:.1f} % of the bf16 peak)" if "peak" in best else "")

        return check

    ref = ["--tiny"] if dry else ["--epochs", "2"]  # 2 timed epochs per method on the GPU: ~1 min with warm-ups
    m1d = ["--mnist1d", "--ks", "1", "2", "--hidden", "32", "32"] if dry else ["--mnist1d", "--epochs", "5"]
    m1d += ["--trial-epochs", "30"]  # the study's epochs
    steps: list[tuple[str, float, float, Callable[[float], Outcome]]] = [  # name, cap, minimum, check
        ("imports", 60, 10, imports),
        ("CUDA tests", 150, 30, cuda_tests),
        *[(f"{'main job: ' if f == 'main' else ''}launch {' '.join(a)}", 150, 30, user_path(a, f)) for f, a in paths],
        ("out of GPU memory", 90, 20, oom),
        ("best model on a CPU-only process", 60, 15, cpu_load),
        ("bench: reference workload", 150, 40, bench(ref, f"bench_{device}.txt")),
        ("bench: MNIST-1D network", 90, 20, bench(m1d, f"bench_{device}_mnist1d.txt")),
    ]
    for i, (name, cap, minimum, fn) in enumerate(steps):
        report.step(name, cap, sum(s[2] for s in steps[i + 1 :]), minimum, fn)
    path = report.write()
    print("\n" + report.text() + f"\nreport: {path}", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
