"""Training runs that survive being killed and scale over processes: checkpoints, resume, distributed helpers."""
