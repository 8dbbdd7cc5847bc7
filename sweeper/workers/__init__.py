"""Run workers: the trial loop every worker follows, its shared budget, heartbeat and clean stop."""
