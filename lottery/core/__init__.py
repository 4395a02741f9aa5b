"""Foundations: settings, file layout and storage, devices and processes, batches, optimizers."""
