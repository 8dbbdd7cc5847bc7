"""Where workers run: local worker processes, or Ray tasks on a cluster. Each places ``sweeper worker``s;
what a worker does with its trials is ``sweeper.workers``."""
