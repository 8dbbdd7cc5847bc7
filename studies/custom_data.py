"""An example of user data for sweeper: ``data: {dataset: python, function: custom_data.py:load}``.

``load`` returns ``(x, y)``: inputs of shape [n, ...] (flattened to features) and class labels.
sweeper splits them into train / validation / test from the study seed.
"""

import numpy as np


def load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    return make_classification(n_samples=1500, n_features=20, n_informative=10, n_classes=3, random_state=0)
