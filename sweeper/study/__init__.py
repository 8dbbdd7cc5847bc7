"""Define a study: the study file (spec), its search space, sampler and pruner, and its stored record."""
