"""Architectures by name, each with its paper's training and pruning recipe."""
