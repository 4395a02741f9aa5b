"""The studies (IMP, gradual pruning, rewind sweeps, pruning at init, instability, curves,
export, speed), each writing one kind of folder."""
