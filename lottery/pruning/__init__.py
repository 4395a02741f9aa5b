"""The mask engine: masks, selection, criteria, schedules and the gradual pruner."""
