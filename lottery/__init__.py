"""lottery: a toolkit for finding and studying lottery tickets (sparse, trainable subnetworks).

The public API, layer by layer (config -> model + data -> engine -> masks -> records -> analysis).
Names load lazily on first use, so `import lottery` (and `lottery --help`) loads no torch:

    from lottery import TrainConfig, IMPConfig, run_imp
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute in it; None for the module itself)
_API: dict[str, tuple[str, str | None]] = {
    # foundations: settings, run-folder layout, records on disk, device
    "ConfigError": ("lottery.core.config", "ConfigError"),
    "NON_RESULT_FIELDS": ("lottery.core.config", "NON_RESULT_FIELDS"),
    "TrainConfig": ("lottery.core.config", "TrainConfig"),
    "layout": ("lottery.core.layout", None),
    "read_json": ("lottery.core.storage", "read_json"),
    "read_jsonl": ("lottery.core.storage", "read_jsonl"),
    "write_bytes_atomic": ("lottery.core.storage", "write_bytes_atomic"),
    "write_json": ("lottery.core.storage", "write_json"),
    "default_threads": ("lottery.core.device", "default_threads"),
    "resolve_device": ("lottery.core.device", "resolve_device"),
    "eval_batch_size": ("lottery.core.device", "eval_batch_size"),
    # data and models
    "DatasetNotFoundError": ("lottery.datasets.loading", "DatasetNotFoundError"),
    "Splits": ("lottery.datasets.loading", "Splits"),
    "load_dataset": ("lottery.datasets.loading", "load_dataset"),
    "build_model": ("lottery.models.registry", "build_model"),
    "count_parameters": ("lottery.models.registry", "count_parameters"),
    "prunable_names": ("lottery.models.registry", "prunable_names"),
    "compute_profile": ("lottery.models.compute", "profile"),
    "PermutationSpec": ("lottery.models.symmetry", "PermutationSpec"),
    "permutation_spec": ("lottery.models.symmetry", "permutation_spec"),
    # masks, criteria, schedules
    "Context": ("lottery.pruning.criteria", "Context"),
    "score": ("lottery.pruning.criteria", "score"),
    "CRITERIA": ("lottery.pruning.names", "CRITERIA"),
    "register_criterion": ("lottery.pruning.names", "register_criterion"),
    "DATASETS": ("lottery.datasets", "DATASETS"),
    "register_schedule": ("lottery.pruning.schedules", "register_schedule"),
    "register_command": ("lottery.cli.main", "register_command"),
    "register_report_section": ("lottery.analysis.report", "register_report_section"),
    "IMP_CONTROLS": ("lottery.studies.names", "IMP_CONTROLS"),
    "ControlRun": ("lottery.studies.base", "ControlRun"),
    "StudyRecord": ("lottery.studies.base", "StudyRecord"),
    "ImpControl": ("lottery.studies.imp", "ImpControl"),
    "AtInitControl": ("lottery.studies.at_init", "AtInitControl"),
    "register_dataset": ("lottery.datasets", "register_dataset"),
    "MODELS": ("lottery.models", "MODELS"),
    "Recipe": ("lottery.models", "Recipe"),
    "register_model": ("lottery.models", "register_model"),
    "SCHEDULES": ("lottery.pruning.schedules", "SCHEDULES"),
    "Mask": ("lottery.pruning.masks", "Mask"),
    "baked_state_dict": ("lottery.pruning.masks", "baked_state_dict"),
    "prune": ("lottery.pruning.selection", "prune"),
    "random_mask_like": ("lottery.pruning.selection", "random_mask_like"),
    "save_sparse": ("lottery.pruning.masks", "save_sparse"),
    "GradualPruner": ("lottery.pruning.pruner", "GradualPruner"),
    "ALLOCATIONS": ("lottery.pruning.names", "ALLOCATIONS"),
    "layer_counts": ("lottery.pruning.allocation", "layer_counts"),
    "layer_densities": ("lottery.pruning.allocation", "layer_densities"),
    "grow": ("lottery.pruning.selection", "grow"),
    "DynamicSparsity": ("lottery.pruning.dst", "DynamicSparsity"),
    "drop_fraction": ("lottery.pruning.dst", "drop_fraction"),
    "EarlyBird": ("lottery.pruning.early_bird", "EarlyBird"),
    "mask_distance": ("lottery.pruning.early_bird", "mask_distance"),
    "Supermask": ("lottery.pruning.supermask", "Supermask"),
    "signed_constant": ("lottery.pruning.supermask", "signed_constant"),
    "run_length": ("lottery.training.run", "run_length"),
    "Schedule": ("lottery.pruning.schedules", "Schedule"),
    # training
    "train_runs": ("lottery.training.engine", "train_runs"),
    "evaluate": ("lottery.training.stacked", "evaluate"),
    "RunSpec": ("lottery.training.run", "RunSpec"),
    "TrainResult": ("lottery.training.run", "TrainResult"),
    "FolderInUseError": ("lottery.training.runfolder", "FolderInUseError"),
    "check_writable": ("lottery.training.runfolder", "check_writable"),
    "hold": ("lottery.training.runfolder", "hold"),
    "load_data": ("lottery.training.setup", "load_data"),
    "load_run": ("lottery.training.setup", "load_run"),
    "make_model": ("lottery.training.setup", "make_model"),
    "Trainer": ("lottery.training.trainer", "Trainer"),
    # studies
    "AT_INIT_CONTROLS": ("lottery.studies.names", "AT_INIT_CONTROLS"),
    "AT_INIT_PRUNED": ("lottery.studies.at_init", "PRUNED"),
    "AtInitConfig": ("lottery.studies.at_init", "AtInitConfig"),
    "run_at_init": ("lottery.studies.at_init", "run_at_init"),
    "curve_methods": ("lottery.studies.names", "methods"),
    "one_shot_mask": ("lottery.studies.curves", "one_shot_mask"),
    "run_curve": ("lottery.studies.curves", "run_curve"),
    "Architecture": ("lottery.studies.export", "Architecture"),
    "GradualRun": ("lottery.studies.gradual", "GradualRun"),
    "PruningSettings": ("lottery.studies.gradual", "PruningSettings"),
    "pruned_spec": ("lottery.studies.gradual", "pruned_spec"),
    "train_gradual": ("lottery.studies.gradual", "train_gradual"),
    "IMPConfig": ("lottery.studies.imp", "IMPConfig"),
    "run_imp": ("lottery.studies.imp", "run_imp"),
    "run_imp_seeds": ("lottery.studies.imp", "run_imp_seeds"),
    "MIN_POINTS": ("lottery.studies.names", "MIN_POINTS"),
    "default_pairs": ("lottery.studies.instability", "default_pairs"),
    "instability_sweep": ("lottery.studies.instability", "instability_sweep"),
    "train_dense": ("lottery.studies.rewind_sweep", "train_dense"),
    "rewind_sweep": ("lottery.studies.rewind_sweep", "rewind_sweep"),
    "measure_speed": ("lottery.studies.speed", "measure"),
    "SupermaskConfig": ("lottery.studies.supermask", "SupermaskConfig"),
    "train_supermasks": ("lottery.studies.supermask", "train_supermasks"),
    "align": ("lottery.studies.align", "align"),
    "align_networks": ("lottery.studies.align", "match"),
    "load_network": ("lottery.studies.align", "network"),
    # analysis
    "aggregate": ("lottery.analysis.aggregate", "aggregate"),
    "aggregate_folder": ("lottery.analysis.aggregate", "aggregate_folder"),
    "check_same_settings": ("lottery.analysis.aggregate", "check_same_settings"),
    "density_rows": ("lottery.analysis.aggregate", "density_rows"),
    "group_members": ("lottery.analysis.aggregate", "members"),
    "stat_text": ("lottery.analysis.aggregate", "stat_text"),
    "summarize": ("lottery.analysis.aggregate", "summarize"),
    "compute_ledger": ("lottery.analysis.compute", "ledger"),
    "ledger_summary": ("lottery.analysis.compute", "summary"),
    "weight_matching": ("lottery.analysis.alignment", "weight_matching"),
    "permute": ("lottery.analysis.alignment", "permute"),
    "permute_mask": ("lottery.analysis.alignment", "permute_mask"),
    "compare_masks": ("lottery.analysis.overlap", "compare_masks"),
    "error_curve": ("lottery.studies.instability", "error_curve"),
    "error_barrier": ("lottery.studies.instability", "error_barrier"),
    "plots": ("lottery.analysis.plots", None),
    "records": ("lottery.analysis.records", None),
    "at_init_accuracy": ("lottery.analysis.records", "at_init_accuracy"),
    "at_init_table": ("lottery.analysis.records", "at_init_table"),
    "at_init_summaries": ("lottery.analysis.records", "at_init_summaries"),
    "mean_std": ("lottery.analysis.records", "mean_std"),
    "round_accuracy": ("lottery.analysis.records", "round_accuracy"),
    "search_rounds": ("lottery.analysis.records", "search_rounds"),
    "write_report": ("lottery.analysis.report", "write_report"),
    # command-line helpers for scripts that take the same flags
    "HelpFormatter": ("lottery.cli.main", "HelpFormatter"),
    "main": ("lottery.cli.main", "main"),
    "parse_ints": ("lottery.cli.main", "parse_ints"),
    # sweeps: a grid of runs on local workers, Ray or Slurm
    "Sweep": ("lottery.sweeps.plan", "Sweep"),
    "SweepOptions": ("lottery.sweeps.run", "Options"),
    "EXECUTORS": ("lottery.sweeps.run", "EXECUTORS"),
    "read_sweep": ("lottery.sweeps.plan", "read_sweep"),
    "point_name": ("lottery.sweeps.plan", "point_name"),
    "run_sweep": ("lottery.sweeps.run", "run_sweep"),
    "IncompleteSweep": ("lottery.sweeps.run", "IncompleteSweep"),
    "EXIT_INCOMPLETE": ("lottery.sweeps.run", "EXIT_INCOMPLETE"),
    "sweep_status": ("lottery.sweeps.points", "status_rows"),
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and keep the name here."""
    if name not in _API:
        raise AttributeError(f"module 'lottery' has no attribute {name!r}")
    module, attribute = _API[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
