"""What the ``sweeper`` command prints of a study: its counts and best trial, its test scores, its end steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # sweeper --help stays instant: no optuna import
    from sweeper.study.record import StudyReport


def print_report(rep: StudyReport) -> None:
    """``sweeper status`` (and the last lines of ``launch`` and ``finish``): one study in a few lines."""
    counts = ", ".join(f"{v} {k}" for k, v in rep.counts.items() if v)
    click.echo(f"{rep.name}: {counts or 'no trials'} (budget {rep.budget})")
    if rep.best_trial is not None:
        click.echo(f"  best value {rep.best_value:.4f} (trial #{rep.best_trial})")
    if rep.test:
        click.echo(f"  best trial's test accuracy {rep.test['test_accuracy']:.4f}")
    if rep.refit:
        click.echo(f"  its settings refit on train + validation: test accuracy {rep.refit['test_accuracy']:.4f}")
    _echo_end(rep)


def print_best(rep: StudyReport) -> None:
    """``sweeper best``: the best trial's parameters, value and test scores."""
    click.echo(f"best trial #{rep.best_trial} of {rep.name}: {rep.best_value:.4f}")
    for k, v in rep.best_params.items():
        click.echo(f"  {k:<20} {v}")
    if rep.test:
        how = "the selected network" if rep.test.get("model") == "selected" else "its retrain"
        click.echo(f"  test accuracy        {rep.test['test_accuracy']:.4f}  ({how}; once, not used for selection)")
    if rep.refit:
        click.echo(f"  refit test accuracy  {rep.refit['test_accuracy']:.4f}  (its settings trained on train + val)")
    for kind, uri in rep.model_uris().items():  # mlflow.pytorch.load_model(uri), on the study's tracking store
        click.echo(f"  {kind + ' model':<20} {uri}")
    _echo_end(rep)


def print_refit(result: dict[str, Any], rep: StudyReport, stored: bool) -> None:
    """``sweeper refit``: the refit's test score beside the selected network's; whether it was stored already."""
    click.echo(
        f"trial #{result['trial']}'s settings refit on train + validation ({result['train_size']} samples, "
        f"{result['epochs']} epochs): test accuracy {result['test_accuracy']:.4f} (it fits its own training data "
        f"at {result.get('fit_accuracy', float('nan')):.4f})"
    )
    if rep.test:
        click.echo(f"  the selected trial's own network: test accuracy {rep.test['test_accuracy']:.4f}")
    if stored:
        click.echo(
            "  this is the stored refit: it is trained once per best trial, with that trial's seed, so training it "
            "again gives the same network; a study given more trials ('sweeper launch STUDY_FILE --trials N') "
            "refits its new best trial"
        )


def best_json(rep: StudyReport) -> dict[str, Any]:
    """``sweeper best --json``."""
    return {"study": rep.name, "trial": rep.best_trial, "value": rep.best_value, "params": rep.best_params,
            "test": rep.test, "refit": rep.refit, "end": rep.end, "run_id": rep.run_id,
            "models": rep.model_uris()}  # fmt: skip


def _echo_end(rep: StudyReport) -> None:
    """What a finished study's end steps are waiting for, if anything (``sweeper.finish``), with the fix."""
    end, fix = rep.end or {}, f"run 'sweeper finish {rep.name}'"
    if end.get("state") == "pending":
        click.echo(f"  end steps (test score, best model, refit) not run yet: {fix}")
    elif end.get("state") == "failed":
        click.echo(f"  end steps failed: {end.get('error')}; {fix}")
    elif end.get("state") == "running":
        age = float(end.get("age", 0.0))
        click.echo(f"  end steps running on {end.get('by')} (last sign {age:.0f} s ago; if it died, {fix})")
