"""What the acceptance asks in a process of its own: each prints one ``RESULT {json}`` line.

    python3 scripts/gpu_probes.py facts [WHEELS]      # python, torch, CUDA, the GPU, its driver; sweeper's imports
    CUDA_VISIBLE_DEVICES= python3 scripts/gpu_probes.py load DIR STUDY   # the best model, reloaded without a GPU

They run apart from the driver so that it never holds a CUDA context of its own (the workers and the
out-of-memory check get the whole GPU) and so that ``load`` sees no GPU at all.
"""

from __future__ import annotations

import importlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

MODULES = ["torch", "numpy", "optuna", "sqlalchemy", "alembic", "pydantic", "mlflow", "mlflow.pytorch", "mnist1d",
           "cmaes", "plotly", "matplotlib", "sklearn", "pytest", "sweeper.cli", "sweeper.tracking.tracker"]  # fmt: skip


def result(payload: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(payload, default=str), flush=True)


def facts() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}
    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda_runtime=torch.version.cuda)
        out["gpus"] = torch.cuda.device_count()
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            out["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["driver"] = f"unknown ({e})"
    return out


def imports(wheels: str | None) -> dict[str, Any]:
    """Import what sweeper runs on; with ``wheels`` (the .whl/ folder), check each carried wheel's requirements
    against what this python has (the device's own packages are not pinned here: a conflict shows there first)."""
    from importlib import metadata

    versions, failed = {}, {}
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
            versions[name] = getattr(mod, "__version__", "")
        except Exception as e:  # report every missing piece, not only the first
            failed[name] = f"{type(e).__name__}: {e}"
    out: dict[str, Any] = {"versions": versions, "failed": failed}
    if wheels and Path(wheels).is_dir():
        from packaging.requirements import Requirement

        carried = sorted({p.name.split("-")[0] for p in Path(wheels).glob("*.whl")})
        missing, conflicts = set(), []
        for dist in carried:
            for spec in metadata.requires(dist) or []:
                req = Requirement(spec)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                try:
                    have = metadata.version(req.name)
                except metadata.PackageNotFoundError:
                    missing.add(req.name)
                    continue
                if not req.specifier.contains(have, prereleases=True):
                    conflicts.append(f"{dist} needs {req}, has {have}")
        out.update(carried=len(carried), not_carried=sorted(missing), conflicts=conflicts)
    return out


def load(workdir: str, study: str) -> dict[str, Any]:
    """The study's ``best_model`` loaded with ``mlflow.pytorch.load_model``, scored on the raw test inputs."""
    import mlflow
    import numpy as np
    import torch

    from sweeper.study.record import StudyRecord
    from sweeper.training.data import load_raw_splits

    record = StudyRecord.open(study, f"sqlite:///{workdir}/sweeper.db")
    stored = record.result("test")
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    model = mlflow.pytorch.load_model(f"runs:/{record.parent_run_id}/best_model")
    classes = json.loads(mlflow.artifacts.load_text(f"runs:/{record.parent_run_id}/classes.json"))
    spec = record.spec
    x, y = load_raw_splits(spec.data, spec.seed, spec.base_dir).test
    with torch.no_grad():
        logits = model(torch.as_tensor(x, dtype=torch.float32).reshape(len(x), -1))
    accuracy = float((logits.argmax(-1).numpy() == np.asarray(y)).mean())
    return {"cuda_visible": torch.cuda.is_available(), "n_test": len(y), "accuracy": accuracy,
            "stored": stored, "classes": len(classes), "logits_device": str(logits.device)}  # fmt: skip


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "facts":  # one process for both: each python start with torch costs seconds on a small CPU
        result({**imports(args[0] if args else None), **facts()})
    elif cmd == "load":
        result(load(args[0], args[1]))
    else:
        sys.exit(f"unknown probe {cmd!r}: facts [WHEELS] | load DIR STUDY")
