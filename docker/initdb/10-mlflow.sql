-- MLflow keeps its runs in a database of its own, beside the Optuna study database.
CREATE DATABASE mlflow;
