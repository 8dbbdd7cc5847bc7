"""sweeper: regularization sweeps for PyTorch networks on Optuna, tracked in MLflow."""

from sweeper.errors import SpecError, StudyError, SweeperError

__all__ = ["SpecError", "StudyError", "SweeperError"]
__version__ = "0.1.0"
