"""The step loop and everything one training run owns: its folder, records and resume."""
