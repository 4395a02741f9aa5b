"""Runnable research scripts (`python -m experiments.<name>`)."""
