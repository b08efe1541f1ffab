"""The settings of `python -m featalign.analyze` (and the examples built on it), checked before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from featalign.cli import UsageError, check_choice, check_positive
from featalign.config import JsonConfig

# The registry (featalign.analysis.stages.STAGES) is the authority on stage names; this is only the default
# value of --stages, every registered stage in report order (tests/analysis/test_stages.py keeps them equal).
DEFAULT_STAGES = "attribution,controls,drift,success,cards"


@dataclass
class AnalyzeConfig(JsonConfig):
    """Every setting of an analysis run; the model set and task set default to the organisms."""

    out: str = "runs/analysis"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    model_set: str | None = None  # a JSON/YAML model set instead of the organisms
    model: tuple[str, ...] = ()  # NAME=DIR[@rev] flags instead of the organisms (roles base / rl / sft)
    series: tuple[str, ...] = ()  # ROLE=DIR1,DIR2,... checkpoint series for drift
    tasks: str | None = None  # a JSONL task set (default: the organisms' domains)
    train_tasks: str | None = None  # tasks the tuned models were trained on (default: the organisms' post-training)
    crosscoder: str | None = None  # an existing base/rl/sft crosscoder dir to analyse instead of training one
    hook: str | None = "auto"  # measured (featalign.analysis.layers); None: the middle block (default_hook)
    layer_tokens: int = 2000  # --hook auto: tokens the per-layer change is measured on
    n_tokens: int = 40_000  # training activations (train split of the task suite), per model
    eval_tokens: int = 10_000  # held-out activations (eval split) for attribution / Latent Scaling
    variant: str = "batchtopk"
    n_latents: int = 1024
    k: int = 16
    steps: int = 600
    batch_size: int = 1024
    lr: float = 1e-3
    sparsity_coef: float = 2.0  # l1 / jumprelu only
    drift_mode: str = "joint"  # joint | pairwise | both
    drift_nulls: bool = True  # identical-copies and shuffled-order nulls next to each drift result
    drift_permutations: int = 1000  # shuffled-order null: every order when n! <= this, else this many random ones
    top_k: int = 50
    lean: float = 0.6  # graded pairwise counts: NRN >= lean (tuned-leaning) / <= 1 - lean
    positions: str = "last"  # RL-success score positions (success_features.POSITIONS)
    success_frac: float = 0.2
    min_samples: int = 8
    gradient: bool = True  # activation x gradient attribution score next to Score_k
    n_null: int = 50
    n_cards: int = 8  # per category (RL-only, SFT-only, success, drift)
    stages: str = DEFAULT_STAGES
    device: str = "cpu"  # where the models run (caching, scoring, success features, cards)
    model_dtype: str = "float32"  # the models' dtype there (bfloat16 halves a real model's memory on a GPU)
    threads: int = 1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        """Every setting is checked here, before anything is cached or trained (stage names: `resolve_stages`)."""
        from featalign.organisms.config import PRESETS

        self.model, self.series = tuple(self.model), tuple(self.series)
        check_choice("--drift-mode", self.drift_mode, ("joint", "pairwise", "both"))
        check_choice("--model-dtype", self.model_dtype, ("float32", "bfloat16", "float16"))
        check_choice("--organisms-preset", self.organisms_preset, sorted(PRESETS))
        for name in (
            "n_tokens",
            "eval_tokens",
            "threads",
            "top_k",
            "min_samples",
            "drift_permutations",
            "layer_tokens",
        ):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("n_null", "n_cards"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name), allow_zero=True)
        if not 0.5 < self.lean <= 1:
            raise UsageError(f"--lean must be in (0.5, 1], got {self.lean}")
        self._check_sub_configs()

    def _check_sub_configs(self) -> None:
        """The sub-configs' own checks (variant, k <= n_latents, lr > 0, positions, ...)."""
        from featalign.analysis.success_features import SuccessConfig
        from featalign.crosscoder.config import CrosscoderConfig, TrainerConfig
        from featalign.crosscoder.variants import has_field

        try:
            CrosscoderConfig(
                n_latents=self.n_latents,
                variant=self.variant,
                seed=self.seed,
                variant_cfg={"k": self.k} if has_field(self.variant, "k") else None,
            )
            TrainerConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, sparsity_coef=self.sparsity_coef)
            SuccessConfig(
                positions=self.positions, frac=self.success_frac, min_samples=self.min_samples, n_null=self.n_null
            )
        except ValueError as e:
            raise UsageError(f"invalid setting: {e}") from e

    @property
    def stage_names(self) -> list[str]:
        return [s.strip() for s in self.stages.split(",") if s.strip()]

    @property
    def uses_organisms(self) -> bool:
        """No model set given: the organisms (built on first use) are the models."""
        return not (self.model or self.model_set)


def check_shared_settings(cfg: JsonConfig) -> AnalyzeConfig:
    """Check the fields another config (an example's) shares with AnalyzeConfig by AnalyzeConfig's own rules,
    so every script refuses a bad --variant, --positions, --k ... the same way and before any work; returns
    that AnalyzeConfig (analyze's defaults for the rest), which the example hands to the analysis helpers
    (`resolve_models`, `text_sources`, `train_or_load`, `drift_study`) so they read its settings as analyze's."""
    names = {f.name for f in dataclasses.fields(AnalyzeConfig)}
    return AnalyzeConfig(**{k: v for k, v in cfg.to_dict().items() if k in names})


HELP = {
    "out": "report directory (also caches activations and crosscoders; a rerun reuses them)",
    "organisms_preset": "organisms preset to open/build: default | tiny",
    "organisms_dir": "organisms folder (default: the featalign cache dir for the preset)",
    "model_set": "a JSON/YAML model set (featalign.model_set.ModelSet) instead of the organisms",
    "model": "a model NAME=DIR[@revision] (names/roles base, rl, sft) instead of the organisms",
    "series": "a checkpoint series ROLE=DIR1,DIR2,... in training order (rl / sft), for drift",
    "tasks": "a JSONL task set ({prompt, answer[, task, split]} rows) for the activations' text and the success "
    "stage (default: the organisms' domains)",
    "train_tasks": "comma-separated tasks the tuned models were trained on; the success stage scores the others "
    "(default: the organisms' post-training domains, or none)",
    "crosscoder": "analyse this trained base/rl/sft crosscoder (python -m featalign.train_crosscoder --out DIR) "
    "instead of training one",
    "hook": "hook point, or auto: the block whose residual stream the tuned models changed most, measured "
    "(||x_tuned - x_base|| / ||x_base|| per block, featalign.analysis.layers); the fixed middle block is "
    "blocks.<n_layers/2-1>.hook_resid_post",
    "layer_tokens": "--hook auto: tokens of training text the per-layer change is measured on",
    "n_tokens": "tokens of training activations per model",
    "eval_tokens": "held-out tokens for attribution statistics and Latent Scaling",
    "variant": "crosscoder variant for the crosscoders trained here: batchtopk | l1 | jumprelu",
    "n_latents": "latents per crosscoder",
    "k": "batchtopk: active latents per token",
    "steps": "training steps per crosscoder",
    "batch_size": "crosscoder batch size (tokens)",
    "lr": "crosscoder learning rate",
    "sparsity_coef": "l1/jumprelu sparsity coefficient",
    "drift_mode": "checkpoint alignment: joint (one crosscoder over base + all checkpoints) | pairwise | both",
    "drift_nulls": "drift nulls next to each series (true/false): the base in place of every checkpoint (one more "
    "joint crosscoder per series length) and the checkpoints in shuffled orders (a permutation p; no training)",
    "drift_permutations": "shuffled-order null: every checkpoint order when there are at most this many (exact p), "
    "else this many seeded random orders",
    "top_k": "top-k model-specific features compared between successive checkpoints",
    "lean": "graded pairwise count threshold: NRN >= lean is tuned-leaning (strict classes use 0.9)",
    "positions": "RL-success score positions: last (last prompt token) | all (mean over prompt tokens) | "
    "answer_end (the reference answer's last token, answer teacher-forced: where the model decides to stop)",
    "success_frac": "keep latents above this fraction of the per-task maximum score",
    "min_samples": "fewest base-fail/RL-success samples for a task to be scored",
    "gradient": "also compute the activation x gradient score and its agreement (true/false)",
    "n_null": "random-subset null repeats for the success features",
    "n_cards": "feature cards per category",
    "stages": f"comma-separated subset of {DEFAULT_STAGES} (dependencies are added: cards need attribution)",
    "device": "device the models run on (caching, scoring, success features, cards): cpu | cuda | cuda:N",
    "model_dtype": "the models' dtype: float32 | bfloat16 | float16 (the crosscoders stay float32)",
    "threads": "torch CPU threads",
    "seed": "seed",
    "progress": "progress bars (true/false)",
}
