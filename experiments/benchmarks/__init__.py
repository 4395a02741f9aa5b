"""Benchmarks: each module has `run(quick: bool, device: str) -> list[Row]`; `python -m experiments.benchmarks` prints them all."""
