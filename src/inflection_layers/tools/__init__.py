"""Hand-run tools, not stages of the study: benchmark, learning-rate sweep, Slurm adapter, reproduction check."""
