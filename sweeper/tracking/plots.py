"""Optuna's study plots as files: interactive HTML (plotly) and PNG (matplotlib, previewed by the MLflow UI).

PNGs come from ``optuna.visualization.matplotlib`` on the Agg backend, so no browser or kaleido is needed.
A plot that cannot be drawn yet (importances with fewer than two completed trials, no intermediate
values) is skipped: plotting must never stop a study.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper.study.record import FINISHED, count_states

log = logging.getLogger("sweeper.tracking.plots")


def _dropout_params(study: optuna.Study) -> list[str]:
    names: set[str] = set()
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        names.update(k for k in t.params if k.startswith("dropout."))
    return sorted(names)


def _plots(study: optuna.Study) -> dict[str, tuple[str, dict[str, Any]]]:
    """File stem -> (name of the optuna.visualization function, its keyword arguments)."""
    plots: dict[str, tuple[str, dict[str, Any]]] = {
        "optimization_history": ("plot_optimization_history", {}),
        "param_importances": ("plot_param_importances", {}),
        "parallel_coordinate": ("plot_parallel_coordinate", {}),
        "intermediate_values": ("plot_intermediate_values", {}),
    }
    for p in _dropout_params(study):
        plots[f"slice_{p}"] = ("plot_slice", {"params": [p]})
    return plots


def _completed(study: optuna.Study) -> int:
    return count_states(study, (TrialState.COMPLETE,))[TrialState.COMPLETE]


def write_study_plots(study: optuna.Study, out_dir: str | Path, png: bool = True, html: bool = True) -> list[Path]:
    """Write each plot that can be drawn now as ``<name>.html`` and ``<name>.png``; return the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not _completed(study):
        return []
    written: list[Path] = []
    for stem, (fn, kwargs) in _plots(study).items():
        if fn == "plot_param_importances" and _completed(study) < 2:
            continue  # fANOVA needs at least two completed trials
        if html:
            written += _try(stem, lambda fn=fn, kw=kwargs, s=stem: _html(study, fn, kw, out / f"{s}.html"))
        if png:
            written += _try(stem, lambda fn=fn, kw=kwargs, s=stem: _png(study, fn, kw, out / f"{s}.png"))
    return written


def _try(stem: str, draw: Callable[[], Path]) -> list[Path]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for the matplotlib backend
            return [draw()]
    except Exception as e:  # a plot that cannot be drawn yet is skipped, the study goes on
        log.info("skipped plot %s: %s: %s", stem, type(e).__name__, e)
        return []


def _html(study: optuna.Study, fn: str, kwargs: dict[str, Any], path: Path) -> Path:
    import optuna.visualization as vis

    fig = getattr(vis, fn)(study, **kwargs)
    if not fig.data:
        raise ValueError("nothing to draw")
    # plotly.js from a CDN keeps each file small; the MLflow UI shows it in a sandboxed frame
    fig.write_html(str(path), include_plotlyjs="cdn", full_html=True)
    return path


def _png(study: optuna.Study, fn: str, kwargs: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display in a worker
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    ax = getattr(vis, fn)(study, **kwargs)
    fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
    try:
        if not fig.axes or not any(a.has_data() for a in fig.axes):
            raise ValueError("nothing to draw")
        fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
        fig.savefig(path, dpi=80, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
