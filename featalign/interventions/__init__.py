"""Interventions: feature edits on a live model (`edits`) and the experiments that test them against
matched random controls (`experiments`).

    from featalign.interventions import ablate, intervene, run_intervention
    with intervene(rl_model, crosscoder, "rl", ablate(success_ids)):
        correct = score_problems(rl_model, tok, problems)
"""

from featalign.interventions.edits import (
    KINDS,
    POSITIONS,
    Edit,
    LogitMonitor,
    ablate,
    as_feature_ids,
    check_features,
    clamp,
    hook_fns,
    intervene,
    project,
    scale,
    steer,
    typical_activation,
)
from featalign.interventions.experiments import (
    SIZE_BINS_HELP,
    InterventionResult,
    SweepResult,
    TaskResult,
    as_task_dict,
    coefficient_sweep,
    control_stats,
    firing_bins,
    matched_random_features,
    matching_bins,
    paired_bootstrap_ci,
    run_intervention,
)

__all__ = [
    "KINDS",
    "POSITIONS",
    "SIZE_BINS_HELP",
    "Edit",
    "InterventionResult",
    "LogitMonitor",
    "SweepResult",
    "TaskResult",
    "ablate",
    "as_feature_ids",
    "as_task_dict",
    "check_features",
    "clamp",
    "coefficient_sweep",
    "control_stats",
    "firing_bins",
    "matching_bins",
    "hook_fns",
    "intervene",
    "matched_random_features",
    "paired_bootstrap_ci",
    "project",
    "run_intervention",
    "scale",
    "steer",
    "typical_activation",
]
