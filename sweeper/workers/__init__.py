"""Run workers: the trial loop, its shared budget and clean stop, and the launchers that start workers."""
