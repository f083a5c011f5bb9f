"""Studies built from many runs: resumable sweeps, the threshold study and the min-width search."""
