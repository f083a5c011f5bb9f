"""The engine: the ensemble trainer, its gradient paths, the trace recorder and one run."""
