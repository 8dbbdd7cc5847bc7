"""After the search: the best trial's network scored once on test, and (on request) its settings refit on
train + validation. Both are logged to MLflow as models that take raw inputs; neither ever selects anything."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import optuna

from sweeper.errors import DivergedError, TrackingError
from sweeper.study.hparams import Hparams
from sweeper.study.record import StudyRecord, first_try
from sweeper.study.spec import StudySpec
from sweeper.study.urls import mask_url, storage_url, tracking_uri

if TYPE_CHECKING:
    from sweeper.training.data import Dataset

log = logging.getLogger("sweeper")
_MODEL = {"test": "best", "refit": "refit"}  # a stored result's kind -> its logged model, <name>_model


def score_best_on_test(
    record: StudyRecord | str, *, tracking: str | None = None, storage: str | None = None, data: Dataset | None = None
) -> dict[str, Any] | None:
    """Score the best trial's network once on the test split, and log it as the study's best model.

    The network is the selected one itself: the weights its worker kept when it finished as the best
    trial so far (``sweeper.tracking.selected``). Only where they cannot be had (tracking off, or the
    tracking store lost them) is the trial retrained with its seed instead; ``model`` in the result says
    which. The test score is reported, never used for selection. ``record`` is an open study or a study
    name (in ``storage``); ``data``: the study's prepared data, when the caller has it already.
    """
    from sweeper.training.loss import evaluate
    from sweeper.training.objective import prepare_data

    record = _open(record, storage)
    best = record.best_trial()
    if best is None:
        return None
    spec, uri = record.spec, _uri(record, tracking)
    done = record.result("test", best)
    missing = _model_missing(uri, record, "best", best.number)  # first: MLflow down means nothing is scored
    if done and not missing:
        return done
    data = prepare_data(spec) if data is None else data
    model, source = _best_network(record, best, data, uri)
    if done:  # scored already; only its model was not logged (tracking was down, or its logger died)
        _log_model(record, uri, model, data, done, "best")
        return done
    _, val_acc = evaluate(model, data.val, spec.train.eval_batch_size)
    test_loss, test_acc = evaluate(model, data.test, spec.train.eval_batch_size)
    result = {"trial": best.number, "test_accuracy": test_acc, "test_loss": test_loss, "val_accuracy": val_acc}
    _log_and_store(record, uri, model, data, {**result, "model": source}, "test")
    return {**result, "model": source}


def refit_best(
    record: StudyRecord | str, *, tracking: str | None = None, storage: str | None = None, data: Dataset | None = None
) -> dict[str, Any] | None:
    """Train the best trial's settings again on train + validation, score that network once on test.

    A user's final model gets the validation samples too; its test score is reported beside the selected
    trial's, never instead of it (no data is left to check it on). Same seed as the trial, and as many epochs
    as it trained (with early stopping: up to its best epoch). Logged as the study run's ``refit_model``.
    """
    import torch

    from sweeper.training.data import Split
    from sweeper.training.loss import evaluate
    from sweeper.training.objective import fit, prepare_data
    from sweeper.training.train import trial_seed

    record = _open(record, storage)
    best = record.best_trial()
    if best is None:
        return None
    spec, uri = record.spec, _uri(record, tracking)
    done = record.result("refit", best)
    missing = _model_missing(uri, record, "refit", best.number)
    if done and not missing:
        return done
    data = prepare_data(spec) if data is None else data
    both = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    epochs = _epochs_trained(spec, best)
    train = spec.train.model_copy(update={"epochs": epochs, "early_stopping_patience": None})
    log.info("refitting trial #%d's settings on train + validation (%d samples, %d epochs)", best.number,
             len(both.y), epochs)  # fmt: skip
    try:
        model, _ = fit(
            spec.model_copy(update={"train": train}),
            dataclasses.replace(data, train=both, val=both),  # nothing held out: its "validation" is what it trains on
            _hparams(spec, best),
            trial_seed(spec.seed, first_try(best)),
        )
    except DivergedError as e:
        raise DivergedError(
            f"the refit of trial #{best.number} on train + validation diverged ({e}); the selected network "
            "stays the study's model"
        ) from None
    # its check without held-out data: how well it fits what it trained on, against the selected network on val
    _, fit_acc = evaluate(model, both, spec.train.eval_batch_size)
    test_loss, test_acc = evaluate(model, data.test, spec.train.eval_batch_size)
    result = {"trial": best.number, "test_accuracy": test_acc, "test_loss": test_loss, "train_size": len(both.y),
              "epochs": epochs, "fit_accuracy": fit_acc}  # fmt: skip
    if done:  # refit already; only its model was not logged: the same seed trained it again for that
        _log_model(record, uri, model, data, done, "refit")
        return done
    selected = record.result("test", best)
    if selected and fit_acc < selected["val_accuracy"] - 0.05:
        log.warning(
            "the refit of trial #%d fits its own training data at %.4f, below the selected network's validation "
            "accuracy %.4f: it trained worse than the selected network; deploy best_model instead",
            best.number, fit_acc, selected["val_accuracy"],
        )  # fmt: skip
    _log_and_store(record, uri, model, data, result, "refit")
    return result


def _uri(record: StudyRecord, tracking: str | None) -> str | None:
    """Where the study's models go: its MLflow store, when it has a study run there."""
    uri = tracking_uri(tracking)
    return uri if uri and record.parent_run_id else None


def _model_missing(uri: str | None, record: StudyRecord, kind: str, trial: int) -> bool:
    """Whether the study run lacks the trial's ``<kind>_model`` (never, with tracking off); ``TrackingError``
    while MLflow does not answer, before anything is scored: a network retrained because its kept weights
    could not be downloaded would be scored, and another one logged later."""
    if uri is None:
        return False
    from sweeper.tracking.study_run import logged_model_ready

    try:
        return not logged_model_ready(uri, str(record.parent_run_id), f"{kind}_model", trial)
    except Exception as e:
        raise TrackingError(f"MLflow at {mask_url(uri)} did not answer ({type(e).__name__})") from None


def _log_and_store(
    record: StudyRecord, uri: str | None, model: Any, data: Any, result: dict[str, Any], kind: str
) -> None:
    """Log the model first, then store the result: a finisher killed in between leaves no result, and the next
    one logs nothing twice (it finds the model logged). When the tracking store refuses the model, the result
    is stored all the same and the ``TrackingError`` says so; whoever runs the end steps next logs the model."""
    try:
        _log_model(record, uri, model, data, result, _MODEL[kind])
    finally:
        record.set_result(kind, result)


def _open(record: StudyRecord | str, storage: str | None) -> StudyRecord:
    return StudyRecord.open(record, storage_url(storage)) if isinstance(record, str) else record


def _hparams(spec: StudySpec, trial: optuna.trial.FrozenTrial) -> Hparams:
    return spec.hparams(optuna.trial.FixedTrial(trial.params, trial.number))


def _epochs_trained(spec: StudySpec, trial: optuna.trial.FrozenTrial) -> int:
    """The epochs a complete trial's network trained: all of them, or with early stopping up to its best."""
    values = trial.intermediate_values
    if spec.train.early_stopping_patience is None or not values:
        return spec.train.epochs
    pick = max if spec.direction == "maximize" else min
    return pick(values, key=lambda e: values[e]) + 1  # the first best epoch, as early stopping restores it


def _best_network(record: StudyRecord, best: optuna.trial.FrozenTrial, data: Any, uri: str | None) -> tuple[Any, str]:
    """The best trial's network: its kept weights ("selected"), or retrained with its seed ("retrained")."""
    from sweeper.training.models import build_network
    from sweeper.training.objective import fit
    from sweeper.training.train import trial_seed

    spec = record.spec
    hp = _hparams(spec, best)
    if uri and record.parent_run_id:
        from sweeper.tracking.selected import load_selected_weights

        weights = load_selected_weights(uri, record.parent_run_id, best.number)
        if weights is not None:
            model = build_network(spec.network, data.in_features, data.num_classes, hp, spec.base_dir)
            model.load_state_dict(weights)
            return model.to(data.train.x.device), "selected"
    log.info("retraining the best trial #%d (same seed) to score it once on the test split", best.number)
    model, _ = fit(spec, data, hp, trial_seed(spec.seed, first_try(best)))
    return model, "retrained"


def _log_model(record: StudyRecord, uri: str | None, model: Any, data: Any, result: dict[str, Any], kind: str) -> None:
    """``<kind>_model`` on the study run, taking raw inputs, unless it is there already; ``TrackingError`` when
    the tracking store refuses it (the caller says so: tracking never fails a finished study)."""
    if uri is None:
        return
    from sweeper.tracking.study_run import log_best_model
    from sweeper.training.data import load_raw_splits
    from sweeper.training.models import for_raw_inputs

    spec = record.spec
    log.info("logging the %s model (trial #%d) to MLflow", kind, result["trial"])
    try:
        # the logged model takes raw inputs: the standardization it was trained behind goes in with it
        raw_test_x = load_raw_splits(spec.data, spec.seed, spec.base_dir).test[0]
        raw_model = for_raw_inputs(model.cpu(), data.mean, data.std)
        log_best_model(uri, record.parent_run_id, raw_model, raw_test_x[:5], data.classes, result, kind)
    except Exception as e:
        raise TrackingError(
            f"could not log the {kind} model to MLflow at {mask_url(uri)} ({type(e).__name__})"
        ) from None
