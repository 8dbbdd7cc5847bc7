"""An example of a user network for sweeper: ``network: {type: python, factory: custom_net.py:build}``.

sweeper calls ``build`` once per trial with the trial's dropout rates (input layer first, then one
per hidden layer) and whether batch norm is on; it returns any ``torch.nn.Module`` mapping
``[batch, in_features]`` to ``[batch, num_classes]`` logits.
"""

from torch import nn


def build(in_features: int, num_classes: int, dropout: list[float], batch_norm: bool) -> nn.Module:
    p_in, p_hidden = dropout[0], dropout[1]
    norm = nn.BatchNorm1d(128) if batch_norm else nn.Identity()
    return nn.Sequential(
        nn.Dropout(p_in),
        nn.Linear(in_features, 128),
        norm,
        nn.SiLU(),
        nn.Dropout(p_hidden),  # inverted dropout: scaled in training, identity in eval()
        nn.Linear(128, num_classes),
    )
