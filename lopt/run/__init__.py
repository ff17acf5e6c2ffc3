"""A run's lifecycle around training: its output directory, its lock, its record."""
