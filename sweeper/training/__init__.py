"""Train one network per trial: data, networks, the training loop, the objective, population training."""
