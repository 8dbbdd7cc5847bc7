"""The ``sweeper`` command: a thin click shell over ``sweeper.api``."""

from __future__ import annotations

import json
import logging
import os
import tempfile

import click

from sweeper.cli_options import (
    UserError,
    checkpoint_dir_opt,
    configure_logging,
    errors,
    population_opt,
    storage_opt,
    study_file_opts,
    threads_opt,
    tracking_opt,
)
from sweeper.cli_report import best_json, print_best, print_refit, print_report


@click.group()
@click.version_option(package_name="sweeper")
@click.option("-v", "--verbose", is_flag=True, help="Also show MLflow's and Optuna's own messages.")
def main(verbose: bool) -> None:
    """Regularization sweeps (dropout, L2/L1, momentum, lr scale, max-norm) for PyTorch networks."""
    configure_logging(verbose)


@main.command()
@study_file_opts
@population_opt
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes on this machine (Ray tasks with --ray); they share the trial budget.",
)
@click.option("--gpus", help="GPUs for the workers, round-robin: 'all' (default), 'none' (CPU) or ids like '0,2'.")
@threads_opt
@checkpoint_dir_opt
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    metavar="[ADDRESS]",
    help="Run the workers as Ray tasks: 'auto' (the cluster this node is in), host:6379, ray://host:10001, "
    "or no address for a Ray started on this machine. Needs pip install 'sweeper[ray]'.",
)
@click.option(
    "--cpus-per-worker",
    type=float,
    help="With --ray: CPUs Ray reserves for each worker [default: 1].",
)
@click.option(
    "--gpus-per-worker",
    type=float,
    help="With --ray: GPUs for each worker, e.g. 1, or 0.25 for four workers per GPU [default: 0, the CPU].",
)
@errors
def launch(
    study_file: str,
    trials: int | None,
    storage: str | None,
    tracking_uri: str | None,
    allow_changed_spec: bool,
    population: int | None,
    workers: int,
    gpus: str | None,
    threads: int | None,
    checkpoint_dir: str | None,
    ray_address: str | None,
    cpus_per_worker: float | None,
    gpus_per_worker: float | None,
) -> None:
    """Create (or resume) the study in STUDY_FILE and run it to its budget."""
    from sweeper import api

    rep = api.launch(
        study_file,
        trials=trials,
        storage=storage,
        tracking=tracking_uri,
        allow_changed=allow_changed_spec,
        progress=True,
        population=population,
        workers=workers,
        gpus=gpus,
        threads=threads,
        checkpoint_dir=checkpoint_dir,
        ray=ray_address,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
    )
    print_report(rep)


@main.command()
@study_file_opts
@errors
def create(
    study_file: str, trials: int | None, storage: str | None, tracking_uri: str | None, allow_changed_spec: bool
) -> None:
    """Create (or resume) the study in STUDY_FILE without running trials; workers join it by name."""
    from sweeper import api

    spec = api.create(
        study_file, trials=trials, storage=storage, tracking=tracking_uri, allow_changed=allow_changed_spec
    )
    click.echo(f"study {spec.name!r} ready: start workers with 'sweeper worker {spec.name}'")


@main.command()
@click.argument("study_name")
@storage_opt
@tracking_opt
@population_opt
@click.option(
    "--worker-id",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="A label for this worker's trials (the 'worker' attribute and MLflow tag); each worker seeds its own sampler.",
)
@click.option("--device", help="cpu | cuda | cuda:N [default: the study file's train.device].")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@threads_opt
@checkpoint_dir_opt
@click.option(
    "--end-steps/--no-end-steps",
    default=True,
    show_default=True,
    help="When the budget is met, run the study's end steps (test score, best model, refit) unless another "
    "process runs them; --no-end-steps leaves them to 'sweeper finish'.",
)
@errors
def worker(
    study_name: str,
    storage: str | None,
    tracking_uri: str | None,
    population: int | None,
    worker_id: int,
    device: str | None,
    progress: bool,
    threads: int | None,
    checkpoint_dir: str | None,
    end_steps: bool,
) -> None:
    """Join the existing study STUDY_NAME and run trials until its budget is met (SIGTERM/Ctrl-C stop it cleanly)."""
    from sweeper import api

    n = api.join(
        study_name,
        storage=storage,
        tracking=tracking_uri,
        progress=progress,
        population=population,
        worker_id=worker_id,
        device=device,
        threads=threads,
        checkpoint_dir=checkpoint_dir,
        end_steps=end_steps,
    )
    click.echo(f"worker ran {n} trial(s)")


@main.command()
@click.argument("study_name")
@storage_opt
@tracking_opt
@threads_opt
@errors
def finish(study_name: str, storage: str | None, tracking_uri: str | None, threads: int | None) -> None:
    """Run the end steps of STUDY_NAME, whose budget is met: the best trial's test score and model, the refit.

    Workers run them when the last trial ends; this is for when that worker died mid-way or tracking
    was down. Steps already done are not repeated; a worker running them now is waited for.
    """
    from sweeper import api

    rep = api.finish(study_name, storage=storage, tracking=tracking_uri, threads=threads, require_done=True)
    print_report(rep)
    if (rep.end or {}).get("state") == "failed":  # the reason is printed above, with how to carry on
        raise SystemExit(1)


@main.command()
@click.argument("study_name", required=False)
@storage_opt
@errors
def status(study_name: str | None, storage: str | None) -> None:
    """Trials by state and the best value, for one study or all."""
    from sweeper import api

    reps = [api.report(study_name, storage=storage)] if study_name else api.list_studies(storage=storage)
    if not reps:
        click.echo("no studies yet: start one with 'sweeper launch studies/mnist1d_mlp.yaml'")
    for rep in reps:
        print_report(rep)


@main.command()
@click.argument("study_name")
@storage_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@errors
def best(study_name: str, storage: str | None, as_json: bool) -> None:
    """The best trial's parameters, value and test score, and the MLflow URIs of its models."""
    from sweeper import api

    rep = api.report(study_name, storage=storage)
    if rep.best_trial is None:
        raise UserError(f"study {study_name!r} has no completed trial yet")
    if as_json:
        click.echo(json.dumps(best_json(rep), indent=2))
        return
    print_best(rep)


@main.command()
@click.argument("study_name")
@storage_opt
@tracking_opt
@threads_opt
@errors
def refit(study_name: str, storage: str | None, tracking_uri: str | None, threads: int | None) -> None:
    """Train the best trial's settings again on train + validation and score it once on test (a refit already
    stored, e.g. by the study's end steps, is shown as it is)."""
    from sweeper import api

    stored = api.report(study_name, storage=storage).refit
    result = api.refit(study_name, storage=storage, tracking=tracking_uri, threads=threads)
    if result is None:
        raise UserError(f"study {study_name!r} has no completed trial yet")
    print_refit(result, api.report(study_name, storage=storage), stored=result == stored)


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--epochs", type=click.IntRange(min=2), default=5, show_default=True)
@errors
def check(study_file: str, epochs: int) -> None:
    """Train briefly with dropout off and confirm the training loss goes down steadily."""
    from sweeper.study.spec import load_spec
    from sweeper.training.check import dropout_off_check

    result = dropout_off_check(load_spec(study_file), epochs)
    click.echo(result.verdict)
    if not result.passed:
        raise SystemExit(1)


@main.command()
@click.argument("study_name", required=False)
@tracking_opt
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option(
    "--allowed-hosts",
    help="Host headers the UI answers besides localhost and private IPs, "
    "e.g. 'mlflow.example.com' when it is reached by name through a proxy (MLflow's DNS-rebinding guard).",
)
@errors
def ui(study_name: str | None, tracking_uri: str | None, host: str, port: int, allowed_hosts: str | None) -> None:
    """Start the MLflow dashboard on the tracking store (Ctrl-C stops it)."""
    from sweeper.study.urls import mask_url
    from sweeper.study.urls import tracking_uri as resolve
    from sweeper.tracking.ui import experiment_url, link_hint, serve_forever, start_server

    uri = resolve(tracking_uri)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = experiment_url(uri, f"http://{shown}:{port}", study_name)  # a wrong study name fails before the server starts
    verbose = logging.getLogger("sweeper").isEnabledFor(logging.DEBUG)
    log_file = None if verbose else os.path.join(tempfile.gettempdir(), f"sweeper-mlflow-ui-{port}.log")
    proc = start_server(uri, host, port, allowed_hosts=allowed_hosts, log_file=log_file)
    click.echo(f"MLflow UI on {mask_url(uri)}: {url}")
    click.echo(
        f"Ctrl-C to stop. {link_hint(url)}" + (f" Server log: {log_file} (-v shows it here)" if log_file else "")
    )
    serve_forever(proc)


if __name__ == "__main__":  # the launcher starts workers as ``python -m sweeper.cli worker``
    main()
