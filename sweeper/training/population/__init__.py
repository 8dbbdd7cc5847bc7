"""Population training: K trials of the built-in MLP stacked on one device, trained as one.

The networks are one ``models.MLP`` with K members (the one-trial network's own layers, ``training.layers``);
``stacked`` adds each member's settings and SGD momentum, ``optim`` their SGD step, ``trainer`` the epoch loop
with members joining and leaving; ``sweeper.workers.population`` runs the worker loop over Optuna trials.
"""
