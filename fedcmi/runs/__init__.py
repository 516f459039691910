"""A run on disk: the run directory, its checkpoint, the metrics-row schema and atomic file writes."""
