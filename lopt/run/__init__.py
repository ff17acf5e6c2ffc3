"""A run's lifecycle around training (start, signals, resume, checkpoints, validation)."""
