"""`python -m featalign.analyze`: analyse the shared feature space of base / RL / SFT models.

With no arguments: open (or build) the default organisms, cache every model's activations at the
middle residual layer (base, 5 RL and 5 SFT checkpoints), train the crosscoders the analysis needs
(base/RL/SFT trio, base-vs-RL and base-vs-SFT pairs, two base-vs-base controls, one joint
crosscoder per checkpoint series), and write a report directory: report.json, report.md, PNG
figures and HTML feature cards (index.html, one page per latent in cards/). Everything trained is
cached in --out, so a rerun only redoes the analysis; a rerun with other settings retrains exactly the
crosscoders (and recaches the activations) those settings change, and says so.

It answers, with intervals and next to base-vs-base nulls: are there more SFT-specific latents
than RL-specific ones; do SFT features stabilise earlier than RL's; is there a compact RL-success
feature set shared across out-of-domain tasks.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featalign.cli import UsageError, check_choice, check_exists, check_out_dir, check_positive, run_cli
from featalign.config import JsonConfig, config_from_args, config_parser

STAGES = ("attribution", "controls", "drift", "success", "cards")


@dataclass
class AnalyzeConfig(JsonConfig):
    out: str = "runs/analysis"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    crosscoder: str | None = None  # an existing base/rl/sft crosscoder dir to analyse instead of training one
    hook: str | None = None  # default: the middle residual layer blocks.<n_layers/2-1>.hook_resid_post
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
    top_k: int = 50
    lean: float = 0.6  # graded pairwise counts: NRN >= lean (tuned-leaning) / <= 1 - lean
    positions: str = "last"  # RL-success score positions: last prompt token | all prompt tokens
    success_frac: float = 0.2
    min_samples: int = 8
    gradient: bool = True  # activation x gradient attribution score next to Score_k
    n_null: int = 50
    n_cards: int = 8  # per category (RL-only, SFT-only, success, drift)
    stages: str = ",".join(STAGES)
    threads: int = 1
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        """Every setting is checked here, before anything is cached or trained."""
        from featalign.analysis.success_features import SuccessConfig
        from featalign.crosscoder.config import CrosscoderConfig, TrainerConfig
        from featalign.organisms.config import PRESETS

        bad = sorted(set(self.stages.split(",")) - set(STAGES))
        if bad:
            raise UsageError(f"unknown stage(s) {bad} in --stages; choose from {','.join(STAGES)}")
        check_choice("--drift-mode", self.drift_mode, ("joint", "pairwise", "both"))
        check_choice("--organisms-preset", self.organisms_preset, sorted(PRESETS))
        for name in ("n_tokens", "eval_tokens", "threads", "top_k", "min_samples"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name))
        for name in ("n_null", "n_cards"):
            check_positive(f"--{name.replace('_', '-')}", getattr(self, name), allow_zero=True)
        if not 0.5 < self.lean <= 1:
            raise UsageError(f"--lean must be in (0.5, 1], got {self.lean}")
        try:  # the sub-configs' own checks (variant, k <= n_latents, lr > 0, positions, ...)
            from featalign.crosscoder.variants import has_field

            CrosscoderConfig(n_latents=self.n_latents, variant=self.variant, seed=self.seed,
                             variant_cfg={"k": self.k} if has_field(self.variant, "k") else None)
            TrainerConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, sparsity_coef=self.sparsity_coef)
            SuccessConfig(positions=self.positions, frac=self.success_frac, min_samples=self.min_samples,
                          n_null=self.n_null)
        except ValueError as e:
            raise UsageError(f"invalid setting: {e}") from e


def check_shared_settings(cfg: JsonConfig) -> None:
    """Check the fields another config (an example's) shares with AnalyzeConfig by AnalyzeConfig's own rules,
    so every script refuses a bad --variant, --positions, --k ... the same way and before any work."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(AnalyzeConfig)}
    AnalyzeConfig(**{k: v for k, v in cfg.to_dict().items() if k in names})


HELP = {
    "out": "report directory (also caches activations and crosscoders; a rerun reuses them)",
    "organisms_preset": "organisms preset to open/build: default | tiny",
    "organisms_dir": "organisms folder (default: the featalign cache dir for the preset)",
    "crosscoder": "analyse this trained base/rl/sft crosscoder (python -m featalign.train_crosscoder --out DIR) "
                  "instead of training one",
    "hook": "hook point (default: blocks.<n_layers/2-1>.hook_resid_post)",
    "n_tokens": "tokens of training activations per model",
    "eval_tokens": "held-out tokens for attribution statistics and Latent Scaling",
    "variant": "crosscoder variant for the crosscoders trained here: batchtopk | l1 | jumprelu",
    "n_latents": "latents per crosscoder", "k": "batchtopk: active latents per token",
    "steps": "training steps per crosscoder", "batch_size": "crosscoder batch size (tokens)",
    "lr": "crosscoder learning rate", "sparsity_coef": "l1/jumprelu sparsity coefficient",
    "drift_mode": "checkpoint alignment: joint (one crosscoder over base + all checkpoints) | pairwise | both",
    "top_k": "top-k model-specific features compared between successive checkpoints",
    "lean": "graded pairwise count threshold: NRN >= lean is tuned-leaning (strict classes use 0.9)",
    "positions": "RL-success score positions: last (last prompt token) | all (mean over prompt tokens)",
    "success_frac": "keep latents above this fraction of the per-task maximum score",
    "min_samples": "fewest base-fail/RL-success samples for a task to be scored",
    "gradient": "also compute the activation x gradient score and its agreement (true/false)",
    "n_null": "random-subset null repeats for the success features",
    "n_cards": "feature cards per category",
    "stages": f"comma-separated subset of {','.join(STAGES)}",
    "threads": "torch CPU threads", "seed": "seed", "progress": "progress bars (true/false)",
}


def build_parser() -> argparse.ArgumentParser:
    return config_parser(AnalyzeConfig, HELP, "python -m featalign.analyze", __doc__)


def resolve_config(argv: list[str] | None) -> AnalyzeConfig:
    """Flags over `--config` over defaults; every value checked (AnalyzeConfig) and every path too."""
    args = build_parser().parse_args(argv)
    if args.config:
        check_exists(args.config, "--config")
    cfg = config_from_args(AnalyzeConfig, args)
    check_out_dir(cfg.out)
    if cfg.crosscoder:
        check_exists(Path(cfg.crosscoder) / "cfg.json", "--crosscoder", "file (a trained crosscoder folder's cfg.json)")
    if cfg.organisms_dir and Path(cfg.organisms_dir).exists():
        check_exists(cfg.organisms_dir, "--organisms-dir", "folder")
    return cfg


# --- building blocks ------------------------------------------------------------------------------------


def open_organisms(preset: str, root: str | None):
    """A complete organisms folder is opened read-only, whatever its preset; otherwise it is built."""
    from featalign.organisms.build import Organisms, ensure_organisms

    if root and Path(root, "config.json").exists():
        org = Organisms.open(root)
        return org if org.is_complete() else ensure_organisms(org.config.preset, root)
    return ensure_organisms(preset, root)


def model_dirs_for(org) -> dict[str, str]:
    """base, rl@1..n, sft@1..n (the final checkpoints are the trio's rl and sft)."""
    from featalign.analysis.drift import series_from_organisms

    dirs = {"base": str(org.base_dir)}
    for kind in ("rl", "sft"):
        dirs |= {k: v for k, v in series_from_organisms(org, kind).model_dirs().items() if k != "base"}
    return dirs


def cached_activations(path: Path, model_dirs: dict[str, str], hook: str, n_tokens: int, split: str, seed: int,
                       progress: bool) -> torch.Tensor:
    """[N, M, 1, D] activations of every model on task-suite text, cached in a safetensors file."""
    from safetensors.torch import load_file

    from featalign.crosscoder.hf import collect_activations
    from featalign.io import atomic_write_bytes, safetensors_bytes

    key = {"models": ",".join(model_dirs), "dirs": ",".join(model_dirs.values()), "hook": hook,
           "n_tokens": str(n_tokens), "split": split, "seed": str(seed)}
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if f.metadata() == key:
                return load_file(str(path))["acts"]
    x = collect_activations(model_dirs, (hook,), n_tokens, seed=seed, split=split, progress=progress)
    atomic_write_bytes(path, safetensors_bytes({"acts": x.contiguous()}, metadata=key))
    return x


TRAINED_ON_FILE = "trained_on.json"


def _sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(memoryview(x.detach().cpu().contiguous().numpy()).cast("B")).hexdigest()


def train_or_load(out: Path, models: tuple[str, ...], x_NMHD: torch.Tensor, hook: str, cfg: AnalyzeConfig):
    """Train a crosscoder on in-memory activations into `out` (resumes; reuses a finished one).

    `out/trained_on.json` records everything the result depends on (crosscoder and trainer configs, a
    SHA-256 of the training activations); a folder trained (or half-trained) on anything else is
    retrained from scratch with a warning naming what changed, so a rerun with other settings never
    reports crosscoders that were trained with the old ones."""
    from featalign.crosscoder import Crosscoder, CrosscoderConfig, InMemoryActivations, TrainerConfig, train_crosscoder
    from featalign.io import atomic_write_json, read_json
    from featalign.crosscoder.variants import has_field

    ccfg = CrosscoderConfig(models=models, hooks=(hook,), d_model=x_NMHD.shape[-1], n_latents=cfg.n_latents,
                            variant=cfg.variant, variant_cfg={"k": cfg.k} if has_field(cfg.variant, "k") else None,
                            seed=cfg.seed)
    tcfg = TrainerConfig(steps=cfg.steps, batch_size=min(cfg.batch_size, len(x_NMHD)), lr=cfg.lr,
                         sparsity_coef=cfg.sparsity_coef, warmup_steps=min(100, cfg.steps // 10 + 1),
                         checkpoint_every=max(200, cfg.steps // 2), log_every=max(50, cfg.steps // 10), seed=cfg.seed)
    trained_on = _jsonable({"crosscoder": ccfg.to_dict(), "trainer": tcfg.to_dict(), "activations_sha256": _sha256(x_NMHD)})
    if out.exists():
        old = read_json(out / TRAINED_ON_FILE) if (out / TRAINED_ON_FILE).exists() else {}
        if old == trained_on:
            if (out / "crosscoder.safetensors").exists():
                return Crosscoder.load(out).eval()
        else:
            changed = [f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {trained_on[sec].get(k)!r}"
                       for sec in ("crosscoder", "trainer")
                       for k in sorted(set(old.get(sec, {})) | set(trained_on[sec]))
                       if old.get(sec, {}).get(k) != trained_on[sec].get(k)]
            if old.get("activations_sha256") != trained_on["activations_sha256"]:
                changed.append("training activations (--n-tokens / --seed / --hook / the models)")
            warnings.warn(f"{out} was trained with other settings ({'; '.join(changed[:8])}); retraining it",
                          stacklevel=2)
            shutil.rmtree(out)
    atomic_write_json(out / TRAINED_ON_FILE, trained_on)
    from featalign.crosscoder.data import estimate_norm_scales

    src = InMemoryActivations(x_NMHD, tcfg.batch_size, seed=cfg.seed, models=models, hooks=(hook,),
                       scales_MH=estimate_norm_scales(x_NMHD))
    return train_crosscoder(ccfg, tcfg, src, out, progress=cfg.progress).eval()


def _t(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def drift_study(series: dict, col, hook: str, cfg: AnalyzeConfig, ccdir: Path) -> tuple[dict, dict]:
    """Feature drift over each checkpoint series ({"sft": CheckpointSeries, "rl": ...}) with joint and/or
    pairwise crosscoders trained on `col(*names)` ([N, M, 1, D] activations of those models), plus the
    SFT-vs-RL stabilisation comparisons: ({result name: DriftResult}, summary dict)."""
    from featalign.analysis.attribution import decoder_vectors, latent_activations
    from featalign.analysis.drift import DriftConfig, compare_stabilisation, drift_joint, drift_pairwise

    dcfg = DriftConfig(top_k=cfg.top_k)
    res = {}
    for kind, s in series.items():
        steps = [c.step for c in s.checkpoints]
        if cfg.drift_mode in ("joint", "both"):
            cc = train_or_load(ccdir / f"drift-{kind}-joint", tuple(s.names), col(*s.names), hook, cfg)
            fired = (latent_activations(cc, col(*s.names)[: cfg.eval_tokens]) > 0).any(0)
            res[kind] = drift_joint(decoder_vectors(cc), dcfg, fired, kind, steps)
        if cfg.drift_mode in ("pairwise", "both"):
            decs, alive_l = [], []
            for n in s.names[1:]:
                cc = train_or_load(ccdir / f"drift-{kind}-pair-{n.split('@')[1]}", ("base", n), col("base", n), hook, cfg)
                decs.append(decoder_vectors(cc))
                alive_l.append((latent_activations(cc, col("base", n)[: cfg.eval_tokens]) > 0).any(0))
            res[kind if cfg.drift_mode == "pairwise" else f"{kind}-pairwise"] = drift_pairwise(decs, dcfg, alive_l, kind, steps)
    summary = {k: v.summary() for k, v in res.items()}
    if "sft" in res and "rl" in res:
        summary["sft_vs_rl"] = compare_stabilisation(res["sft"], res["rl"])
        summary["sft_vs_rl_topk_entry"] = compare_stabilisation(res["sft"], res["rl"], what="topk_entry")
    return res, summary


# --- the pipeline ----------------------------------------------------------------------------------------


def run(cfg: AnalyzeConfig) -> dict:
    from featalign.analysis import plots
    from featalign.analysis.attribution import AttributionConfig, attribute
    from featalign.analysis.controls import (
        control_activations, count_interval, difference_interval, independent_difference_interval, specific_masks,
    )
    from featalign.crosscoder import Crosscoder
    from featalign.io import atomic_write_json, atomic_write_text, provenance

    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    timings: dict[str, float] = {}
    stages = set(cfg.stages.split(","))
    out = Path(cfg.out)
    report: dict = {"config": cfg.to_dict(), **provenance()}

    def lap(name):
        timings[name] = round(time.time() - t0 - sum(timings.values()), 1)

    given = Crosscoder.load(cfg.crosscoder).eval() if cfg.crosscoder else None
    if given is not None and len(given.cfg.hooks) != 1:
        raise UsageError(f"--crosscoder {cfg.crosscoder} was trained on {len(given.cfg.hooks)} hooks {given.cfg.hooks}; "
                         "analyze reads one hook: pass a single-hook crosscoder")
    if given is not None and cfg.hook and cfg.hook != given.cfg.hooks[0]:
        raise UsageError(f"--crosscoder {cfg.crosscoder} was trained on hook {given.cfg.hooks[0]!r}, not --hook {cfg.hook!r}: "
                         "drop --hook (the crosscoder's own hook is used) or pass a crosscoder trained there")
    if given is not None and given.cfg.models != ("base", "rl", "sft")[: given.cfg.n_models]:
        raise UsageError(f"--crosscoder {cfg.crosscoder} was trained on models {given.cfg.models}; analyze needs "
                         "('base', 'rl', 'sft') or ('base', 'rl'), in that order")
    org = open_organisms(cfg.organisms_preset, cfg.organisms_dir)
    report["organisms"] = {"root": str(org.root), "preset": org.config.preset,
                           "post_train_domain": org.config.post_train_domains[0]}
    if given is not None and given.cfg.d_model != org.config.d_model:
        raise UsageError(f"--crosscoder {cfg.crosscoder} has d_model {given.cfg.d_model} but the organisms' width is "
                         f"{org.config.d_model}: its activations do not match the crosscoder; pass one trained on these organisms")
    hook = given.cfg.hooks[0] if given is not None else (
        cfg.hook or f"blocks.{max(0, org.config.n_layers // 2 - 1)}.hook_resid_post")
    from featalign.crosscoder.hf import parse_hook

    try:
        layer = parse_hook(hook)[0]
    except ValueError as e:
        raise UsageError(f"--hook: {e}") from e
    if layer >= org.config.n_layers:
        raise UsageError(f"--hook {hook}: the organisms have layers 0..{org.config.n_layers - 1}")
    report["hook"] = hook
    (out / "figures").mkdir(parents=True, exist_ok=True)
    dirs = model_dirs_for(org)
    n_ck = org.config.n_checkpoints
    dirs_trio = {"base": dirs["base"], "rl": dirs[f"rl@{n_ck}"], "sft": dirs[f"sft@{n_ck}"]}
    need_all = "drift" in stages
    act_dirs = dirs if need_all else dirs_trio
    x = cached_activations(out / "cache" / ("train_all.safetensors" if need_all else "train_trio.safetensors"),
                           act_dirs, hook, cfg.n_tokens, "train", cfg.seed, cfg.progress)
    xe = cached_activations(out / "cache" / "eval_trio.safetensors", dirs_trio, hook, cfg.eval_tokens, "eval",
                            cfg.seed + 1, cfg.progress)
    names = list(act_dirs)
    col = lambda *ms: x[:, [names.index(m if m in names else {"rl": f"rl@{n_ck}", "sft": f"sft@{n_ck}"}[m]) for m in ms]]  # noqa: E731
    ecol = lambda *ms: xe[:, [list(dirs_trio).index(m) for m in ms]]  # noqa: E731
    lap("activations")

    ccdir = out / "crosscoders"
    if given is not None:
        trio = given
        report["crosscoder"] = {"dir": str(cfg.crosscoder), **{k: v for k, v in trio.cfg.to_dict().items()
                                                               if k in ("variant", "n_latents", "k", "hooks")}}
        from featalign.analysis.attribution import check_activations

        check_activations(trio, xe[:, : trio.cfg.n_models], names=tuple(dirs_trio)[: trio.cfg.n_models])
    else:
        trio = train_or_load(ccdir / "trio", ("base", "rl", "sft"), col("base", "rl", "sft"), hook, cfg)
    lap("train trio")
    acfg = AttributionConfig()
    figs = out / "figures"

    # --- 1. attribution ---
    att = attribute(trio, ecol(*trio.cfg.models))
    alive = att.enc["firing_rate"] > 0
    report["attribution"] = att.summary()
    masks = {c: torch.tensor([x_ == c for x_ in att.classes]) for c in ("rl-only", "sft-only", "base-only")}
    masks_ls = {c: torch.tensor([x_ == c for x_ in att.classes_ls]) for c in ("rl-only", "sft-only")}
    a_alive = alive.numpy()
    q1 = {"n_alive": int(alive.sum()),
          "trio": {c: count_interval(_t(m)[a_alive]).as_dict() for c, m in masks.items()},
          "trio_after_latent_scaling": {c: count_interval(_t(m)[a_alive]).as_dict() for c, m in masks_ls.items()},
          "trio_sft_minus_rl": difference_interval(_t(masks["sft-only"])[a_alive], _t(masks["rl-only"])[a_alive]),
          "trio_sft_minus_rl_after_ls": difference_interval(_t(masks_ls["sft-only"])[a_alive],
                                                            _t(masks_ls["rl-only"])[a_alive])}
    plots.mas_histograms(_t(att.mas_LM[alive]), trio.cfg.models, figs / "mas_hist.png", "trio: decoder-norm shares")
    if trio.cfg.n_models == 3:
        cmap = {"shared": "C0", "rl-only": "C3", "sft-only": "C2", "base-only": "C1"}
        plots.ternary(_t(att.mas_LM[alive]), trio.cfg.models, figs / "ternary.png",
                      [cmap.get(c, "grey") for c, a in zip(att.classes, a_alive) if a], "model attribution (alive latents)")
    spec = np.array([c.endswith("-only") for c in att.classes]) & a_alive
    if spec.any():
        ls = att.ls
        absent_nu = lambda nu: np.nanmax(np.where(_t(att.norms_LM / att.norms_LM.max(-1, keepdim=True).values) < acfg.absent_ratio,  # noqa: E731
                                                 _t(nu), np.nan), axis=1)
        with np.errstate(all="ignore"):
            plots.latent_scaling_scatter(absent_nu(ls.nu_error_LM)[spec], absent_nu(ls.nu_recon_LM)[spec],
                                         [c for c, s in zip(att.classes, spec) if s], figs / "latent_scaling.png",
                                         (acfg.ls_error_threshold, acfg.ls_recon_threshold), "model-specific latents")
    lap("attribution")

    # --- 2. pairwise + controls ---
    if "controls" in stages:
        pair_specs = {"base-vs-rl": ("base", "rl"), "base-vs-sft": ("base", "sft")}
        nrns, counts = {}, {}
        pair_masks = {}
        for name, (o, t) in pair_specs.items():
            cc = train_or_load(ccdir / name, (o, t), col(o, t), hook, cfg)
            a = attribute(cc, ecol(o, t))
            nrns[name] = a.nrn[f"{o}|{t}"]
            pair_masks[name] = specific_masks(nrns[name], a.enc["firing_rate"] > 0, lean=cfg.lean)
        base_train, base_eval = col("base"), ecol("base")
        for kind in ("same", "disjoint"):
            name = f"control-{kind}"
            cc = train_or_load(ccdir / name, ("base", "base2"), control_activations(base_train, kind, cfg.seed), hook, cfg)
            a = attribute(cc, control_activations(base_eval, kind, cfg.seed + 1))
            nrns[name] = a.nrn["base|base2"]
            pair_masks[name] = specific_masks(nrns[name], a.enc["firing_rate"] > 0, lean=cfg.lean)
        for name, m in pair_masks.items():
            al = _t(m["alive"])
            counts[name] = {"n_alive": int(al.sum()), "tuned_only": count_interval(_t(m["t_only"])[al]).as_dict(),
                            "base_only": count_interval(_t(m["o_only"])[al]).as_dict(),
                            "shared": count_interval(_t(m["shared"])[al]).as_dict(),
                            "tuned_lean": count_interval(_t(m["t_lean"])[al]).as_dict(),
                            "base_lean": count_interval(_t(m["o_lean"])[al]).as_dict(),
                            "nrn_sd": float(_t(nrns[name])[al].std())}
        al_s, al_r = _t(pair_masks["base-vs-sft"]["alive"]), _t(pair_masks["base-vs-rl"]["alive"])
        q1["pairwise"] = counts
        q1["pairwise_sft_minus_rl_tuned_only"] = independent_difference_interval(
            _t(pair_masks["base-vs-sft"]["t_only"])[al_s], _t(pair_masks["base-vs-rl"]["t_only"])[al_r])
        q1["pairwise_sft_minus_rl_tuned_lean"] = independent_difference_interval(
            _t(pair_masks["base-vs-sft"]["t_lean"])[al_s], _t(pair_masks["base-vs-rl"]["t_lean"])[al_r])
        plots.nrn_histograms({k: _t(v[pair_masks[k]["alive"]]) for k, v in nrns.items()}, figs / "nrn_hist.png",
                             "NRN of alive latents: base-vs-tuned next to base-vs-base controls")
        rows = [(f"{k}: tuned-only", *(v["tuned_only"][f] for f in ("count", "low", "high", "n", "method")))
                for k, v in counts.items()]
        plots.count_bars(rows, figs / "specific_counts.png", title="tuned-only latents (NRN >= 0.9) among the alive ones")
        lap("pairwise + controls")
    report["q1_specific_latents"] = q1

    # --- 3. drift ---
    if "drift" in stages:
        from featalign.analysis.drift import series_from_organisms

        series = {kind: series_from_organisms(org, kind) for kind in ("sft", "rl")}
        res, report["q2_drift"] = drift_study(series, col, hook, cfg, ccdir)
        plots.drift_side_by_side(res, figs / "drift.png")
        lap("drift")

    # --- 4. RL-success features ---
    success = None
    if "success" in stages:
        from featalign.analysis.success_features import (
            SuccessConfig, TooFewSamplesError, organism_tasks, success_features_for_models,
        )

        scfg = SuccessConfig(positions=cfg.positions, frac=cfg.success_frac, min_samples=cfg.min_samples,
                             n_null=cfg.n_null, seed=cfg.seed)
        try:
            success = success_features_for_models(trio, dirs_trio["base"], dirs_trio["rl"], organism_tasks(org), scfg,
                                                  gradient=cfg.gradient, progress=cfg.progress)
            report["q3_success_features"] = success.summary()
            s = success.summary()
            plots.success_sets(s["per_task_sizes"], s["n_features"], s["null"].get("size_95"), figs / "success_sets.png",
                               "RL-success features per task and their intersection")
        except TooFewSamplesError as e:
            report["q3_success_features"] = {"error": str(e)}
        lap("success features")

    # --- 5. feature cards ---
    if "cards" in stages:
        from featalign.analysis.cards import card_examples, write_cards

        chosen: dict[int, str] = {}
        for m_name in ("rl", "sft"):
            if m_name not in trio.cfg.models:
                continue
            # Rank by the model's decoder-norm share over *all* models: NRN(base|rl) alone ignores the
            # SFT decoder and can rank SFT-owned latents as RL-leaning.
            m = trio.cfg.models.index(m_name)
            share = att.mas_LM[:, m]
            idx = [i for i in range(len(att.classes)) if a_alive[i]]
            for i in sorted(idx, key=lambda i: -float(share[i]))[: cfg.n_cards]:
                chosen.setdefault(i, f"largest {m_name} decoder-norm share ({float(share[i]):.2f}, {att.classes[i]})")
        if success is not None:
            for i in success.features[: cfg.n_cards]:
                chosen.setdefault(i, "RL-success feature (all tasks)")
        ex = card_examples(trio, {m: dirs_trio[m] for m in trio.cfg.models}, list(chosen), progress=cfg.progress)
        write_cards(out, list(chosen), ex, {i: att.latent(i) for i in chosen}, chosen,
                    "featalign feature cards (trio crosscoder)")
        report["cards"] = {"index": str(out / "index.html"), "n": len(chosen)}
        lap("cards")

    report["figures"] = sorted(p.name for p in figs.glob("*.png"))
    timings["total"] = round(time.time() - t0, 1)
    report["timings_s"] = timings
    atomic_write_json(out / "report.json", _jsonable(report))
    atomic_write_text(out / "report.md", markdown(report))
    return report


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


CP_MARK = "†"  # marks an exact Clopper-Pearson interval (a count of 0 or n has no bootstrap variation)


def _ci(d: dict) -> str:
    mark = CP_MARK if d.get("method") == "clopper-pearson" else ""
    return f"{d['count']} [{d['low']:.0f}, {d['high']:.0f}]{mark}"


def markdown(r: dict) -> str:
    """The report's Markdown summary (numbers straight from report.json)."""
    conf = r["config"]
    trained = (f"{conf['variant']}, {conf['n_latents']} latents, {conf['steps']} steps, lr {conf['lr']:g}, batch {conf['batch_size']}, "
               f"trained on {conf['n_tokens']} tokens per model")
    if "crosscoder" in r:
        g = r["crosscoder"]
        crosscoders = (f"trio loaded from `{g['dir']}` ({g['variant']}, {g['n_latents']} latents); the others "
                       f"trained here: {trained}")
    else:
        crosscoders = trained
    L = ["# featalign analysis report", "",
         f"Organisms: `{r['organisms']['root']}` (preset {r['organisms']['preset']}, post-trained on "
         f"'{r['organisms']['post_train_domain']}'), hook `{r.get('hook', conf.get('hook'))}`. Crosscoders: {crosscoders}; "
         f"{conf['eval_tokens']} held-out tokens for attribution. Intervals: 95% percentile bootstrap (resampling latents / "
         f"samples / features) unless marked {CP_MARK} (exact Clopper-Pearson, for a count of 0 or of all latents).", ""]
    q1 = r.get("q1_specific_latents", {})
    L += ["## Q1. Are there more SFT-specific latents than RL-specific ones?", "",
          f"Trio crosscoder (base, rl, sft), {q1.get('n_alive')} alive latents:", "",
          "| class | count [95% CI] | after Latent Scaling |", "|---|---|---|"]
    for c in ("rl-only", "sft-only", "base-only"):
        after = q1.get("trio_after_latent_scaling", {}).get(c)
        L.append(f"| {c} | {_ci(q1['trio'][c])} | {_ci(after) if after else '-'} |")
    d = q1.get("trio_sft_minus_rl", {})
    if d:
        L += ["", f"SFT-only minus RL-only: {d['difference']:+.0f} [{d['low']:+.0f}, {d['high']:+.0f}] "
              f"(share of resamples <= 0: {d['p_le_0']:.3f}); after Latent Scaling: "
              f"{q1['trio_sft_minus_rl_after_ls']['difference']:+.0f} [{q1['trio_sft_minus_rl_after_ls']['low']:+.0f}, "
              f"{q1['trio_sft_minus_rl_after_ls']['high']:+.0f}]."]
    if "pairwise" in q1:
        L += ["", "Pairwise crosscoders (NRN >= 0.9 tuned-only, <= 0.1 base-only) next to the base-vs-base nulls:", "",
              f"| crosscoder | alive | tuned-only | base-only | shared (0.4-0.6) | tuned-leaning (>= {r['config']['lean']}) "
              f"| base-leaning | sd(NRN) |", "|---|---|---|---|---|---|---|---|"]
        for k, v in q1["pairwise"].items():
            L.append(f"| {k} | {v['n_alive']} | {_ci(v['tuned_only'])} | {_ci(v['base_only'])} | {_ci(v['shared'])} | "
                     f"{_ci(v['tuned_lean'])} | {_ci(v['base_lean'])} | {v['nrn_sd']:.3f} |")
        dd, dl = q1["pairwise_sft_minus_rl_tuned_only"], q1["pairwise_sft_minus_rl_tuned_lean"]
        L += ["", f"SFT minus RL (pairwise), tuned-only: {dd['difference']:+.0f} [{dd['low']:+.0f}, {dd['high']:+.0f}]; "
              f"tuned-leaning: {dl['difference']:+.0f} [{dl['low']:+.0f}, {dl['high']:+.0f}]."]
    if "q2_drift" in r:
        q2 = r["q2_drift"]
        L += ["", "## Q2. Do SFT features stabilise earlier than RL's?", "",
              "| series | mode | top-k overlap between successive checkpoints | mean | stabilisation checkpoint "
              "(median [95% CI]) | top-k entry checkpoint (median [95% CI]) | new specific per checkpoint |",
              "|---|---|---|---|---|---|---|"]
        for k, v in q2.items():
            if k.startswith("sft_vs_rl"):
                continue
            ci, ce = v["stabilisation_median_95"], v["topk_entry_median_95"]
            L.append(f"| {k} | {v['mode']} | {', '.join(f'{o:.2f}' for o in v['overlap'])} | {v['mean_overlap']:.2f} | "
                     f"{v['stabilisation_median']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}] | {v['topk_entry_median']:.1f} "
                     f"[{ce[0]:.1f}, {ce[1]:.1f}] | {v['new_features']} |")
        for key, label in (("sft_vs_rl", "stabilisation"), ("sft_vs_rl_topk_entry", "top-k entry")):
            c = q2[key]
            L += ["", f"Median {label} SFT - RL: {c['median_diff']:+.1f} checkpoints [{c['median_diff_95'][0]:+.1f}, "
                  f"{c['median_diff_95'][1]:+.1f}]; one-sided Mann-Whitney p (SFT earlier) = {c['mannwhitney_p_a_earlier']:.3g}."]
    if "q3_success_features" in r:
        q3 = r["q3_success_features"]
        L += ["", "## Q3. Is there a compact RL-success feature set shared across tasks?", ""]
        if "error" in q3:
            L.append(f"Not computed: {q3['error']}")
        else:
            b, nl = q3.get("bootstrap", {}), q3["null"]
            L += [f"Tasks: {', '.join(f'{t} ({n} samples)' for t, n in q3['n_samples'].items())}; skipped: "
                  f"{q3['skipped'] or 'none'}.", "",
                  f"Per-task sets: {q3['per_task_sizes']}. Intersection: **{q3['n_features']} latents** "
                  f"(bootstrap 95% {b.get('size_95')}); features {q3['features'][:50]}. Selected in at least half "
                  f"of the tasks: {q3['n_majority']} latents (null {nl['majority_size_mean']:.1f}, 95% "
                  f"{nl['majority_size_95']}).",
                  f"Mean pairwise overlap |A∩B|/min: {q3['mean_pairwise_overlap']:.2f}.",
                  f"Random-subset null ({nl['n']} repeats): intersection {nl['size_mean']:.1f} "
                  f"(95% {nl['size_95']}), mean overlap {nl['mean_overlap_mean']:.2f} (95% "
                  f"[{nl['mean_overlap_95'][0]:.2f}, {nl['mean_overlap_95'][1]:.2f}]); Jaccard of null sets with the real "
                  f"set {nl['jaccard_with_real_mean']:.2f}."]
            if q3.get("gradient"):
                L += ["", "Agreement of Score_k with activation x gradient (per task): " + "; ".join(
                    f"{t}: Spearman {g['spearman']:.2f}, top-{g['top_k']} Jaccard {g['top_k_jaccard']:.2f}"
                    for t, g in q3["gradient"].items())]
    if "cards" in r:
        L += ["", f"Feature cards: `index.html` ({r['cards']['n']} latents)."]
    L += ["", "Figures: " + ", ".join(f"`figures/{p}`" for p in r.get("figures", [])),
          "", f"Timings (s): {r['timings_s']}", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> dict:
    cfg = resolve_config(argv)
    report = run(cfg)
    print(markdown(report))
    print(f"report written to {cfg.out}/ (report.json, report.md, figures/, index.html)")
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m featalign.analyze", sys.argv[1:]))
