"""Sweeps: a grid of runs of one command, one folder per point, run by a local pool of workers,
a Ray cluster or Slurm (`lottery sweep`). The top layer: it runs the command line's commands."""
