"""The selected network itself: the weights a worker kept for the trial that was best when it finished.

A worker uploads a trial's trained weights with its MLflow run (``weights/state_dict.pt``,
``MlflowTracker.keep_weights``) whenever that trial is the study's best so far, so the study's best
trial always has them. At the end of a study they are loaded back and scored on the test split and
logged as the best model; only where they cannot be had (tracking off, or the server lost them) is
the best trial retrained instead.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from sweeper.tracking.client import client_for
from sweeper.tracking.outbox import WEIGHTS_DIR, WEIGHTS_FILE

log = logging.getLogger("sweeper.tracking")


def load_selected_weights(uri: str, parent_run_id: str, trial_number: int) -> dict[str, Any] | None:
    """The state dict kept for trial ``trial_number`` of the study run ``parent_run_id``; None if there is none."""
    import torch
    from mlflow.artifacts import download_artifacts

    try:
        client = client_for(uri)
        exp_id = client.get_run(parent_run_id).info.experiment_id
        runs = client.search_runs(
            [exp_id],
            f"tags.`optuna.trial_number` = '{trial_number}' and tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=5,
        )
        for run in runs:
            names = {a.path for a in client.list_artifacts(run.info.run_id, WEIGHTS_DIR)}
            if f"{WEIGHTS_DIR}/{WEIGHTS_FILE}" not in names:
                continue
            with tempfile.TemporaryDirectory(prefix="sweeper-weights-") as tmp:
                path = download_artifacts(
                    run_id=run.info.run_id,
                    artifact_path=f"{WEIGHTS_DIR}/{WEIGHTS_FILE}",
                    dst_path=tmp,
                    tracking_uri=uri,
                )
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the server is down or lost them: the caller retrains instead
        log.info("the selected trial's weights could not be loaded from MLflow (%s)", type(e).__name__)
    return None
