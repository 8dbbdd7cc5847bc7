"""Track a study in MLflow: the study run, one nested run per trial, plots, and the dashboard."""
