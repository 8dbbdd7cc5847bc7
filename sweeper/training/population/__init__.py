"""Population training: K trials of the built-in MLP stacked on one device, trained as one.

``stacked`` holds the K networks along a member axis, ``optim`` their SGD step, ``trainer`` the
epoch loop with members joining and leaving, ``sweeper.workers.population`` runs the worker loop over Optuna trials.
"""
