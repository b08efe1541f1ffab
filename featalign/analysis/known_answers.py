"""Known answers: run the real attribution and drift code on a tuned model whose difference from the base was
planted (`featalign.organisms.planted`), and score whether each analysis names the planted latent.

Per seed s a unit direction v_s is planted behind a trigger (scale `scale`), and the same code with scale 0
makes the null (a function-identical copy of the base). Then, with the same crosscoder settings as
`python -m featalign.analyze` (`train_or_load`, `attribute`, `drift_study`):

- attribution (base vs planted, and base vs null): *found* = some latent is classed `rl-only` and its rl
  decoder has cosine >= `cos_threshold` with v; graded (`found_lean`): an alive latent with NRN >= analyze's
  `lean` (0.6) and that cosine;
- drift (base, then checkpoints 1..n: the null copy before checkpoint j, the planted model from j on; the null
  series has the copy everywhere): *found* = some feature of the final top-k has final decoder cosine >=
  `cos_threshold` with v and its stabilisation checkpoint (drift's value-based one) is j; the membership-based
  top-k entry is scored too (`found_topk_entry`), though before j every checkpoint equals the base, so top-k
  membership there is a draw among NRN ~0.5 ties and a planted feature may "enter" early by chance.

- success (base vs a model whose successes depend on a planted direction; `success_case`): the plant fires on `=`
  (the answer position) and writes a *learned* direction v that raises the right answer's log-prob on problems
  of `success_domains` whose keyword was replaced by `success_keyword`'s (`planted.misled_problems`: the base
  reads them as the wrong task and fails; one direction can switch the task back). On the eval split of those
  problems (the plant is fitted on the train split): the real selection (`success_features_for_models`, analyze's
  `SuccessConfig`) on a base/planted crosscoder; *found* = a selected latent whose rl decoder has cosine >=
  `cos_threshold` with v. Then the matching selected latents (the plant can be split over more than one; with
  none, the best-matching selected latent, else the best-matching of all; with `edit_latents="selected"` every
  selected latent, as the real analysis edits its features) are ablated in the planted model and
  steered into the base along their rl decoders (`run_intervention`, against
  `n_controls` random latents matched on firing rate), each judged on the tasks the plant helps (its own gain
  over the base with a bootstrap 95% interval above 0; a task it does not help has nothing to undo):
  *ablation_beats_controls* (`ablate`, the latents' reconstruction) and *projection_beats_controls* (`project`,
  the activation's whole component along their decoders where they fire) = on each such task the loss on the
  base-fail / planted-success samples is below 0 and beyond every control (control p at its minimum
  1 / (n_controls + 1)); *steer_helps* = on each such task the base's accuracy gain has its bootstrap 95%
  interval above 0. The null (scale 0: a copy of the base) has no base-fail / planted-success sample at all, so there
  the selection has nothing to select and finds nothing; its interventions are not run.

Detection power = found / seeds on the planted cases; false-positive rate = found / seeds on the nulls (v of
that seed), with exact Clopper-Pearson intervals. The looser "anything flagged" rates (any `rl-only` latent;
any feature specific at the last checkpoint) are reported next to them, so a null that flags latents unrelated
to v is visible too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from featalign.config import JsonConfig
from featalign.organisms.tasks import Problem
from featalign.tasks import Task

#: which latents the success control's interventions edit: "matching" = the selected latents whose rl decoder
#: matches v (the planted feature as the scoring names it); "selected" = every selected latent, what the real
#: analysis edits (Q4 ablates the selection's features), which needs no knowledge of v
EDIT_LATENTS = ("matching", "selected")


@dataclass
class KnownAnswerConfig(JsonConfig):
    """The plant, the seeds, the scoring threshold and the crosscoder settings (analyze's defaults)."""

    out: str = "runs/known_answers"
    organisms_preset: str = "default"
    organisms_dir: str | None = None
    seeds: str = "0-9"  # seeds to run: ranges and single seeds, comma-separated ("0-4,7")
    trigger: str = "token:="
    scale: float = 2.0
    plant_checkpoint: int = 3  # j: the drift series carries the plant from this checkpoint on
    n_checkpoints: int = 5
    cos_threshold: float = 0.9
    analyses: str = "attribution,drift"
    hook: str | None = None
    n_tokens: int = 20_000  # analyze: 40k (halved to fit 10 seeds on 2 cores)
    eval_tokens: int = 5_000  # analyze: 10k
    variant: str = "batchtopk"
    n_latents: int = 512  # analyze: 1024
    k: int = 16
    steps: int = 400  # analyze: 600
    batch_size: int = 1024
    lr: float = 1e-3
    top_k: int = 50
    success_domains: str = "bool,compare"  # success: the domains whose misled problems the plant fixes
    success_keyword: str = "add"  # success: the domain whose keyword misleads the base on them
    success_trigger: str = "token:="  # success: where the plant fires (the answer position of those problems)
    success_scale: float = 2.0  # success: the learned output's largest norm, x the base's median residual norm
    success_problems: int = 500  # success: eval problems per domain (selection and interventions)
    learn_steps: int = 200  # success: steps fitting the plant's direction (PlantConfig.learn_steps)
    n_controls: int = 20  # success: matched random latents per intervention
    edit_latents: str = "matching"  # success: the latents the interventions edit (EDIT_LATENTS)
    size_bins: int = 0  # success: also match the controls on reconstruction size (interventions' SIZE_BINS_HELP)
    steer_coef: float = 1.0  # success: steering coefficient, in units of the latent's typical activation
    steer_positions: str = "last"  # success: where the base is steered (intervene's positions)
    threads: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        from featalign.analysis.config import check_shared_settings
        from featalign.cli import UsageError, check_positive
        from featalign.organisms.planted import PlantConfig, PlantError

        _ = self.seed_list  # refuses a bad --seeds
        check_positive("--n-checkpoints", self.n_checkpoints)
        if not 1 <= self.plant_checkpoint <= self.n_checkpoints:
            raise UsageError(f"--plant-checkpoint must be in 1..{self.n_checkpoints}, got {self.plant_checkpoint}")
        if not 0 < self.cos_threshold < 1:
            raise UsageError(f"--cos-threshold must be in (0, 1), got {self.cos_threshold}")
        bad = sorted(set(self.analysis_names) - set(ANALYSES))
        if bad:
            raise UsageError(f"--analyses {bad}: choose from {','.join(ANALYSES)}")
        try:
            PlantConfig(trigger=self.trigger, scale=self.scale)
        except PlantError as e:
            raise UsageError(f"--trigger / --scale: {e}") from e
        try:
            PlantConfig(
                trigger=self.success_trigger,
                scale=self.success_scale,
                direction="learned",
                learn_domains=self.success_domains,
                learn_keyword=self.success_keyword,
                learn_steps=self.learn_steps,
            )
        except PlantError as e:
            raise UsageError(
                f"--success-trigger / --success-scale / --success-domains / --success-keyword / --learn-steps: {e}"
            ) from e
        from featalign.interventions.edits import POSITIONS

        if self.steer_positions not in POSITIONS:
            raise UsageError(f"--steer-positions must be one of {','.join(POSITIONS)}, got {self.steer_positions!r}")
        if len(self.success_domain_list) < 2:
            raise UsageError(
                "--success-domains: the selection intersects over tasks; give >= 2 domains, e.g. bool,compare"
            )
        check_positive("--success-problems", self.success_problems)
        if self.n_controls < 1:
            raise UsageError(f"--n-controls must be >= 1 (the ablation is judged against them), got {self.n_controls}")
        check_positive("--size-bins", self.size_bins, allow_zero=True)
        if self.edit_latents not in EDIT_LATENTS:
            raise UsageError(f"--edit-latents must be one of {','.join(EDIT_LATENTS)}, got {self.edit_latents!r}")
        check_shared_settings(self)

    @property
    def seed_list(self) -> list[int]:
        """The seeds of `seeds` ("0-4,7" -> [0, 1, 2, 3, 4, 7]), in order, each once."""
        from featalign.cli import UsageError

        out: list[int] = []
        try:
            for part in [p.strip() for p in self.seeds.split(",") if p.strip()]:
                lo, _, hi = part.partition("-")
                out += range(int(lo), int(hi or lo) + 1)
        except ValueError:
            out = []
        if not out or len(set(out)) != len(out) or min(out) < 0:
            raise UsageError(f"--seeds {self.seeds!r}: give seeds >= 0 as ranges and numbers, e.g. 0-9 or 0-4,7")
        return out

    @property
    def analysis_names(self) -> list[str]:
        return [a.strip() for a in self.analyses.split(",") if a.strip()]

    @property
    def success_domain_list(self) -> list[str]:
        return [d.strip() for d in self.success_domains.split(",") if d.strip()]


ANALYSES = ("attribution", "drift", "success")
SCORING_VERSION = 8  # bump when the scoring changes: finished seeds are then rescored (their crosscoders reused)


def cosine_to(dec_LK: torch.Tensor, v_D: torch.Tensor) -> torch.Tensor:
    """Cosine of each latent's decoder vector (one hook) with v (0 for a zero decoder)."""
    return torch.nn.functional.cosine_similarity(dec_LK, v_D[None].to(dec_LK.dtype), dim=-1, eps=1e-12)


def score_attribution(att, dec_LMK: torch.Tensor, v_D: torch.Tensor, threshold: float, lean: float) -> dict:
    """Did attribution name the plant: a `rl-only` latent whose rl decoder matches v (`found`), or, graded, an
    alive rl-leaning one (NRN >= `lean`, analyze's `--lean`: `found_lean`); and what else it flagged."""
    cos_L = cosine_to(dec_LMK[:, att.models.index("rl")], v_D)
    rl_only = torch.tensor([c == "rl-only" for c in att.classes])
    leaning = (att.nrn["base|rl"] >= lean) & (att.enc["firing_rate"] > 0)
    match = rl_only & (cos_L >= threshold)
    best = int(cos_L.argmax())
    return {
        "found": bool(match.any()),
        "found_lean": bool((leaning & (cos_L >= threshold)).any()),
        "n_matching": int(match.sum()),
        "n_rl_only": int(rl_only.sum()),
        "n_rl_leaning": int(leaning.sum()),
        "n_base_only": sum(c == "base-only" for c in att.classes),
        "best_latent": best,
        "best_cos": float(cos_L[best]),
        "best_class": att.classes[best],
        "best_class_after_ls": att.classes_ls[best] if att.classes_ls is not None else None,
        "best_nrn": float(att.nrn["base|rl"][best]),
        "best_firing_rate": float(att.enc["firing_rate"][best]),
    }


def score_drift(result, dec_LMK: torch.Tensor, v_D: torch.Tensor, entry: int, threshold: float) -> dict:
    """Did drift name the plant: a final top-k feature matching v (final checkpoint's decoder) that stabilises at
    checkpoint `entry` (or, `found_topk_entry`, enters the top-k there); plus what else it reports."""
    cos_L = cosine_to(dec_LMK[:, -1], v_D)
    final = result.final_features
    cos_final = cos_L[final]
    best = int(cos_final.argmax())
    matching = [i for i, f in enumerate(final) if cos_L[f] >= threshold]
    return {
        "found": any(result.stabilisation[i] == entry for i in matching),
        "found_topk_entry": any(result.topk_entry[i] == entry for i in matching),
        "n_matching": len(matching),
        "best_feature": int(final[best]),
        "best_cos": float(cos_final[best]),
        "best_topk_entry": int(result.topk_entry[best]),
        "best_stabilisation": int(result.stabilisation[best]),
        "best_nrn_curve": [float(x) for x in result.curves["nrn"][best]],
        "n_specific": list(result.n_specific),
        "new_features": list(result.new_features),
        "overlap": list(result.overlap),
    }


def rate(found: list[bool]) -> dict:
    """k of n with the exact (Clopper-Pearson) 95% interval."""
    from statsmodels.stats.proportion import proportion_confint

    k, n = int(sum(found)), len(found)
    lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
    return {"k": k, "n": n, "rate": k / n, "low": float(lo), "high": float(hi)}


def plant_pair(base: str, out: Path, cfg: KnownAnswerConfig, layer: int, seed: int) -> tuple[str, str]:
    """(planted folder, null folder) of one seed: the plant at `cfg.scale` and the same code at scale 0."""
    from featalign.organisms.planted import PlantConfig, is_planted, plant_feature

    folders = []
    for name, scale in (("planted", cfg.scale), ("null", 0.0)):
        folder = out / name
        plant_cfg = PlantConfig(layer=layer, trigger=cfg.trigger, scale=scale, seed=seed)
        if not is_planted(folder, plant_cfg):
            plant_feature(base, folder, plant_cfg, meta={"role": "rl"})
        folders.append(str(folder))
    return folders[0], folders[1]


def seed_activations(root: Path, dirs: dict[str, str], hook: str, cfg: KnownAnswerConfig, seed: int):
    """(train, eval) `[N, 3, 1, D]` activations of base / planted / null on the organisms' domain mixture, through
    analyze's store (so a rerun reads them back)."""
    from featalign.activations import DomainMixtureSource
    from featalign.analysis.inputs import store_activations
    from featalign.models import ModelSpec

    specs = [ModelSpec(n, d, role="base" if n == "base" else "other") for n, d in dirs.items()]
    x_train = store_activations(
        root / "train",
        specs,
        hook,
        cfg.n_tokens,
        DomainMixtureSource("train", seed, cfg.n_tokens),
        progress=cfg.progress,
    )
    x_eval = store_activations(
        root / "eval",
        specs,
        hook,
        cfg.eval_tokens,
        DomainMixtureSource("eval", seed + 1, cfg.eval_tokens),
        progress=cfg.progress,
    )
    return x_train, x_eval


def attribution_case(out: Path, x_train, x_eval, column: int, v_D, hook: str, acfg, cfg: KnownAnswerConfig) -> dict:
    """Base vs the model in `column` (planted or null) as analyze's pairwise crosscoder, scored against v."""
    from featalign.analysis.attribution import attribute, decoder_vectors
    from featalign.analysis.training import train_or_load

    cc = train_or_load(out, ("base", "rl"), x_train[:, [0, column]], hook, acfg)
    att = attribute(cc, x_eval[:, [0, column]])
    score = score_attribution(att, decoder_vectors(cc), v_D, cfg.cos_threshold, acfg.lean)
    return score | where_it_fires(
        cc, x_eval, column, score["best_latent"], decoder_vectors(cc)[score["best_latent"], 0]
    )


def trigger_tokens(x_base_N_D: torch.Tensor, x_planted_N_D: torch.Tensor) -> torch.Tensor:
    """bool [N]: the tokens where the plant fired, i.e. where the planted activation moved from the base's by more
    than 10% of its largest move."""
    moved_N = (x_planted_N_D.float() - x_base_N_D.float()).norm(dim=-1)
    return moved_N > 0.1 * moved_N.max().clamp_min(1e-12)


@torch.no_grad()
def where_it_fires(cc, x_eval, column: int, latent: int, base_dec_K: torch.Tensor) -> dict:
    """Does the best-matching latent fire where the plant does (trigger = eval tokens where the planted column
    moved by > 10% of its largest move), and does its *base* decoder point along the base's own trigger direction
    (the base's mean activation at trigger tokens minus its mean over all tokens): the sign that v was folded into a
    latent the base already had for the trigger."""
    from featalign.analysis.attribution import latent_activations

    trigger_N = trigger_tokens(x_eval[:, 0, 0], x_eval[:, 1, 0])
    fires_N = latent_activations(cc, x_eval[:, [0, column]])[:, latent] > 0
    base_N_D = x_eval[:, 0, 0].float()
    trigger_dir = base_N_D[trigger_N].mean(0) - base_N_D.mean(0)
    return {
        "best_fires_on_trigger": float((fires_N & trigger_N).sum() / fires_N.sum().clamp_min(1)),
        "trigger_fires_best": float((fires_N & trigger_N).sum() / trigger_N.sum().clamp_min(1)),
        "best_base_decoder_cos_base_trigger_direction": float(cosine_to(base_dec_K[None], trigger_dir)[0]),
    }


@torch.no_grad()
def plant_capture(cc, xe, latents: list[int], v_D: torch.Tensor, cos_threshold: float = 0.9) -> dict:
    """How much of the planted move `ablate` can remove: at the trigger tokens (as `where_it_fires`), the planted
    model's move along v (planted minus base activation, projected on v) against the part of it the edited
    latents write along v (their activations by `encode_as` of the planted activation, the rule the
    interventions edit with, times their raw rl decoders projected on v). `project` removes the activation's
    whole component along those decoders, so with decoders close to v it removes about all of the move; `ablate`
    removes only the latents' reconstruction, this share of it. Median and quartiles over the trigger tokens.

    `writers`: every latent that writes at least 5% of the mean move along v at those tokens (mean activation
    x its rl decoder along v, over the mean move): how many, their summed share, and how many of them have
    rl-decoder cosine >= `cos_threshold` with v (the scoring's "matches v"). Many writers of which few match
    means the crosscoder split the planted direction over latents the selection's match does not name.
    `xe`: the base/planted crosscoder's `[N, 2, 1, D]` eval activations (base, planted)."""
    from featalign.analysis.attribution import decoder_vectors

    x_rl_N_D = xe[:, 1, 0].float()
    moved_N_D = x_rl_N_D - xe[:, 0, 0].float()
    trigger_N = trigger_tokens(xe[:, 0, 0], xe[:, 1, 0])
    v_hat_D = (v_D / v_D.norm()).float()
    plant_T = moved_N_D[trigger_N] @ v_hat_D
    f_TL = cc.encode_as(x_rl_N_D[trigger_N], model="rl").float()
    along_L = cc.W_dec_raw_LMHD.detach()[:, 1, 0].float() @ v_hat_D
    ids = torch.tensor(latents)
    share_T = (f_TL[:, ids] @ along_L[ids]) / plant_T
    q = torch.quantile(share_T, torch.tensor([0.25, 0.5, 0.75])).tolist()
    writes_L = f_TL.mean(0) * along_L / plant_T.mean()
    writers = (writes_L >= 0.05).nonzero().squeeze(1)
    cos_L = cosine_to(decoder_vectors(cc)[:, 1], v_D)
    return {
        "n_trigger_tokens": int(trigger_N.sum()),
        "ablate_share_of_move": {"q25": q[0], "median": q[1], "q75": q[2]},
        "median_move_along_v": float(plant_T.median()),
        "writers": {
            "n": int(writers.numel()),
            "share": float(writes_L[writers].sum()),
            "n_matching": int((cos_L[writers] >= cos_threshold).sum()),
            "cos": sorted((float(c) for c in cos_L[writers]), reverse=True),
        },
    }


def drift_case(
    out: Path, x_train, dirs: dict[str, str], planted_from: int | None, v_D, hook: str, acfg, cfg: KnownAnswerConfig
) -> dict:
    """Drift (analyze's `drift_study`, joint mode) over base, checkpoints 1..n: the null copy before
    `planted_from`, the planted model from it on (None: the copy everywhere), scored against v."""
    from featalign.analysis.attribution import decoder_vectors
    from featalign.analysis.drift import Checkpoint, CheckpointSeries
    from featalign.analysis.inputs import Activations
    from featalign.analysis.stages import drift_study
    from featalign.analysis.training import train_or_load

    which = {
        k: "planted" if planted_from is not None and k >= planted_from else "null"
        for k in range(1, cfg.n_checkpoints + 1)
    }
    series = CheckpointSeries("rl", dirs["base"], [Checkpoint(k, None, dirs[which[k]]) for k in which]).validate()
    acts = Activations(x_train, list(dirs), {f"rl@{k}": m for k, m in which.items()})
    # its null is the scale-0 copy beside it: drift's own nulls (one more crosscoder each) are left off here
    results, _ = drift_study({"rl": series}, acts.columns, hook, dataclasses.replace(acfg, drift_nulls=False), out)
    cc = train_or_load(out / "drift-rl-joint", tuple(series.names), acts.columns(*series.names), hook, acfg)
    return score_drift(results["rl"], decoder_vectors(cc), v_D, cfg.plant_checkpoint, cfg.cos_threshold)


def success_plant_config(cfg: KnownAnswerConfig, layer: int, seed: int, scale: float):
    """The success plant of one seed: fires on `success_trigger`, writes a direction learned on the misled train
    problems, at most `scale` x the base's median residual norm (0: the null copy)."""
    from featalign.organisms.planted import PlantConfig

    return PlantConfig(
        layer=layer,
        trigger=cfg.success_trigger,
        scale=scale,
        seed=seed,
        direction="learned",
        learn_domains=cfg.success_domains,
        learn_keyword=cfg.success_keyword,
        learn_steps=cfg.learn_steps,
    )


def success_pair(base: str, out: Path, cfg: KnownAnswerConfig, layer: int, seed: int) -> tuple[str, str]:
    """(planted folder, null folder) of one seed's success control: the learned plant and the same code at 0."""
    from featalign.organisms.planted import is_planted, plant_feature

    folders = []
    for name, scale in (("success-planted", cfg.success_scale), ("success-null", 0.0)):
        folder = out / name
        plant_cfg = success_plant_config(cfg, layer, seed, scale)
        if not is_planted(folder, plant_cfg):
            plant_feature(base, folder, plant_cfg, meta={"role": "rl"})
        folders.append(str(folder))
    return folders[0], folders[1]


def success_tasks(cfg: KnownAnswerConfig, seed: int) -> dict[str, list[Problem]]:
    """{domain: eval-split misled problems}: the tasks the selection and the interventions score."""
    from featalign.organisms.planted import misled_problems

    return {
        d: misled_problems([d], cfg.success_problems, "eval", seed, cfg.success_keyword)
        for d in cfg.success_domain_list
    }


def score_success(selected: list[int], cos_L: torch.Tensor, threshold: float) -> dict:
    """Did the selection name the plant: a selected latent whose rl decoder has cosine >= `threshold` with v; and
    the latents the interventions edit: every selected latent that matches (the plant may be split over several),
    else the best-matching selected one, else the best-matching of all."""
    match = [k for k in selected if float(cos_L[k]) >= threshold]
    pool = selected or list(range(len(cos_L)))
    target = max(pool, key=lambda k: float(cos_L[k]))
    best = int(cos_L.argmax())
    return {
        "found": bool(match),
        "n_selected": len(selected),
        "n_matching": len(match),
        "edited_latents": sorted(int(k) for k in match) if match else [int(target)],
        "target_latent": int(target),
        "target_selected": target in selected,
        "target_cos": float(cos_L[target]),
        "best_latent": best,
        "best_cos": float(cos_L[best]),
        "best_selected": best in selected,
    }


def intervention_verdict(tasks: dict, n_controls: int) -> dict:
    """From the per-task rows (`TaskResult`s as dicts, and the plant's own gain): the ablation, projection and
    steering criteria over the tasks the plant helps (its own gain over the base with the 95% interval above 0).
    A task the plant does not help has no planted success to undo or recreate; with no such task nothing is met."""
    p_min = 1 / (n_controls + 1)
    helped = [t for t, row in tasks.items() if row["plant_gain"]["ci_low"] > 0]

    def beats_controls(kind: str) -> bool:
        return bool(helped) and all(
            tasks[t][kind]["subset_delta"] is not None
            and tasks[t][kind]["subset_delta"] < 0
            and tasks[t][kind]["subset_control_p"] <= p_min + 1e-9
            for t in helped
        )

    return {
        "helped_tasks": helped,
        "ablation_beats_controls": beats_controls("ablate"),
        "projection_beats_controls": beats_controls("project"),
        "steer_helps": bool(helped) and all(tasks[t]["steer"]["ci_low"] > 0 for t in helped),
        "control_p_min": p_min,
    }


INTERVENTION_FIELDS = (
    "n",
    "acc_without",
    "acc_with",
    "delta",
    "ci_low",
    "ci_high",
    "control_p",
    "subset_n",
    "subset_delta",
    "subset_control_p",
    "nonfinite_frac",
)


def success_case(
    out: Path,
    x_train,
    x_eval,
    column: int,
    dirs: dict[str, str],
    v_D,
    hook: str,
    acfg,
    cfg: KnownAnswerConfig,
    seed: int,
) -> dict:
    """Base vs the model in `column` (1: the success plant, 2: its null): the real RL-success selection on the
    misled eval problems, scored against v; on the planted case, the interventions on the chosen latent."""

    from featalign.analysis.attribution import decoder_vectors
    from featalign.analysis.success_features import (
        SuccessConfig,
        TaskData,
        TooFewSamplesError,
        success_features_for_models,
        success_mask,
    )
    from featalign.analysis.training import train_or_load
    from featalign.evaluation import score
    from featalign.models import load_model

    cc = train_or_load(out, ("base", "rl"), x_train[:, [0, column]], hook, acfg)
    xe = x_eval[:, [0, column]]
    bm, rm = load_model(dirs["base"]), load_model(dirs["planted" if column == 1 else "null"])
    tok = bm.tokenizer
    tasks = success_tasks(cfg, seed)
    data = {t: TaskData(p, score(bm, tok, p), score(rm, tok, p)) for t, p in tasks.items()}
    scored: dict[str, Task | list[Problem]] = dict(tasks)  # what run_intervention takes
    masks = {t: success_mask(d.base_correct, d.rl_correct) for t, d in data.items()}
    result: dict = {
        "acc_base": {t: float(d.base_correct.mean()) for t, d in data.items()},
        "acc_rl": {t: float(d.rl_correct.mean()) for t, d in data.items()},
        "n_success": {t: int(m.sum()) for t, m in masks.items()},
    }
    cos_L = cosine_to(decoder_vectors(cc)[:, 1], v_D)
    try:
        sel = success_features_for_models(cc, bm, rm, data, SuccessConfig(seed=seed), progress=False)
    except TooFewSamplesError as e:
        return result | score_success([], cos_L, cfg.cos_threshold) | {"selection": {"refused": str(e)}}
    result |= score_success(sel.features, cos_L, cfg.cos_threshold)
    if cfg.edit_latents == "selected" and sel.features:
        result["edited_latents"] = sorted(int(k) for k in sel.features)
    summ = sel.summary()
    result["selection"] = {
        k: summ[k] for k in ("features", "per_task_sizes", "n_samples", "skipped", "null", "mean_pairwise_overlap")
    }
    result["selection"]["target_bootstrap_frequency"] = (
        summ["bootstrap"].get("selection_frequency", {}).get(result["target_latent"])
    )
    if column != 1:
        return result
    result["plant_capture"] = plant_capture(cc, xe, result["edited_latents"], v_D, cfg.cos_threshold)
    return result | success_interventions(cc, bm, rm, xe, data, scored, masks, result["edited_latents"], cfg, seed)


def success_interventions(
    cc, bm, rm, xe, data: dict, scored: dict, masks: dict, target, cfg: KnownAnswerConfig, seed: int
) -> dict:
    """Ablate (`ablate`: the latents' reconstruction; `project`: the activation's whole component along their
    decoders where they fire) the latents matching v in the planted model, on its successes (`masks`), and steer
    the base along them, each against frequency-matched random controls (`run_intervention`); per-task rows with
    the plant's own gain, and the verdict."""
    import numpy as np

    from featalign.analysis.attribution import encoder_stats
    from featalign.interventions import (
        ablate,
        paired_bootstrap_ci,
        project,
        run_intervention,
        steer,
        typical_activation,
    )

    tok = bm.tokenizer
    stats = encoder_stats(cc, xe, model="rl")

    def steer_at(ids):  # each (control) set in units of its own typical activation in the planted model
        return steer(ids, cfg.steer_coef, typical_activation(cc, xe, ids, model="rl").nan_to_num(0.0), decoder="rl")

    def controlled(model, name: str, edit, baseline: dict, **kw):  # against the same matched controls
        return run_intervention(
            model,
            tok,
            cc,
            name,
            target,
            edit,
            scored,
            n_controls=cfg.n_controls,
            seed=seed,
            firing_freq_L=stats["firing_rate"],
            size_L=stats["mean_recon_norm"],
            size_bins=cfg.size_bins,
            baseline=baseline,
            **kw,
        )

    planted_baseline = {t: d.rl_correct for t, d in data.items()}
    removed = {
        kind: controlled(rm, "rl", edit, planted_baseline, subset=masks)
        for kind, edit in (("ablate", ablate), ("project", project))
    }
    base_baseline = {t: d.base_correct for t, d in data.items()}
    st = controlled(bm, "base", steer_at, base_baseline, positions=cfg.steer_positions)
    rows: dict[str, dict] = {}
    for t, d in data.items():
        lo, hi = paired_bootstrap_ci(d.base_correct, d.rl_correct, 2000, seed)
        gain = {"delta": float(d.rl_correct.mean() - d.base_correct.mean()), "ci_low": lo, "ci_high": hi}
        rows[t] = {"plant_gain": gain, "steer": {f: getattr(st.tasks[t], f) for f in INTERVENTION_FIELDS}}
        rows[t]["steer"]["control_deltas_range"] = [
            float(np.min(st.tasks[t].control_deltas)),
            float(np.max(st.tasks[t].control_deltas)),
        ]
        for kind, res in removed.items():
            rows[t][kind] = {f: getattr(res.tasks[t], f) for f in INTERVENTION_FIELDS}
            rows[t][kind]["subset_control_deltas_range"] = [
                float(np.min(res.tasks[t].subset_control_deltas)),
                float(np.max(res.tasks[t].subset_control_deltas)),
            ]
    return {
        "edited_typical_activation": typical_activation(cc, xe, target, model="rl").tolist(),
        "interventions": rows,
    } | intervention_verdict(rows, cfg.n_controls)


def run_seed(base: str, out: Path, cfg: KnownAnswerConfig, hook: str, seed: int) -> dict:
    """One seed: plant (and the null copy), cache, then every chosen analysis on the planted case and its null."""
    from featalign.analysis.config import check_shared_settings
    from featalign.organisms.planted import load_plant

    acfg = check_shared_settings(cfg)
    acfg.seed = seed
    result: dict = {"seed": seed}
    if {"attribution", "drift"} & set(cfg.analysis_names):
        planted, null = plant_pair(base, out / "organisms", cfg, int(hook.split(".")[1]), seed)
        plant = load_plant(planted)
        dirs = {"base": base, "planted": planted, "null": null}
        x_train, x_eval = seed_activations(out / "activations", dirs, hook, cfg, seed)
        v_D = plant.direction_D
        result |= {"detector": plant.stats, "amplitude": plant.amplitude}
    if "attribution" in cfg.analysis_names:
        result["attribution"] = {
            case: attribution_case(out / "crosscoders" / f"attr-{case}", x_train, x_eval, col, v_D, hook, acfg, cfg)
            for case, col in (("planted", 1), ("null", 2))
        }
    if "success" in cfg.analysis_names:
        layer = int(hook.split(".")[1])
        s_planted, s_null = success_pair(base, out / "organisms", cfg, layer, seed)
        s_plant = load_plant(s_planted)
        s_dirs = {"base": base, "planted": s_planted, "null": s_null}
        xs_train, xs_eval = seed_activations(out / "activations-success", s_dirs, hook, cfg, seed)
        result["success_plant"] = {"amplitude": s_plant.amplitude, "detector": s_plant.stats}
        result["success"] = {
            case: success_case(
                out / "crosscoders" / f"success-{case}",
                xs_train,
                xs_eval,
                col,
                s_dirs,
                s_plant.direction_D,
                hook,
                acfg,
                cfg,
                seed,
            )
            for case, col in (("planted", 1), ("null", 2))
        }
    if "drift" in cfg.analysis_names:
        result["drift"] = {
            case: drift_case(out / "crosscoders" / f"drift-{case}", x_train, dirs, start, v_D, hook, acfg, cfg)
            for case, start in (("planted", cfg.plant_checkpoint), ("null", None))
        }
    return result


def summarise(per_seed: list[dict], analyses: list[str]) -> dict:
    """Per analysis: detection power on the planted cases and false-positive rates on the nulls."""
    out = {}
    for a in analyses:
        cases = [r[a] for r in per_seed]
        if a == "success":
            out[a] = summarise_success(cases)
            continue
        loose = "n_rl_only" if a == "attribution" else "n_specific"
        flagged = (lambda c: c["n_rl_only"] > 0) if a == "attribution" else (lambda c: c["n_specific"][-1] > 0)
        out[a] = {
            "power": rate([c["planted"]["found"] for c in cases]),
            "false_positive_rate": rate([c["null"]["found"] for c in cases]),
            "null_flags_anything": rate([flagged(c["null"]) for c in cases]),
            **(
                {
                    "power_topk_entry": rate([c["planted"]["found_topk_entry"] for c in cases]),
                    "false_positive_rate_topk_entry": rate([c["null"]["found_topk_entry"] for c in cases]),
                }
                if a == "drift"
                else {}
            ),
            **(
                {
                    "power_lean": rate([c["planted"]["found_lean"] for c in cases]),
                    "false_positive_rate_lean": rate([c["null"]["found_lean"] for c in cases]),
                    "null_flags_anything_lean": rate([c["null"]["n_rl_leaning"] > 0 for c in cases]),
                }
                if a == "attribution"
                else {}
            ),
            "planted_best_cos": [c["planted"]["best_cos"] for c in cases],
            "null_best_cos": [c["null"]["best_cos"] for c in cases],
            "loose_flag": loose,
        }
    return out


def summarise_success(cases: list[dict]) -> dict:
    """The success control over seeds: selection power and false positives, and how often the interventions on
    the chosen latent met their targets (ablation or projection beyond every control; steering gain with its
    interval above 0; each on the tasks the plant helps)."""
    planted = [c["planted"] for c in cases]
    return {
        "power": rate([c["found"] for c in planted]),
        "false_positive_rate": rate([c["null"]["found"] for c in cases]),
        "null_flags_anything": rate([c["null"]["n_selected"] > 0 for c in cases]),
        "power_ablation": rate([bool(c.get("ablation_beats_controls")) for c in planted]),
        "power_projection": rate([bool(c.get("projection_beats_controls")) for c in planted]),
        "power_steer": rate([bool(c.get("steer_helps")) for c in planted]),
        # per seed (scored from SCORING_VERSION 7 on): the share of the planted move that `ablate` can remove
        "ablate_share_of_move": [
            c["plant_capture"]["ablate_share_of_move"]["median"] for c in planted if "plant_capture" in c
        ],
        "planted_best_cos": [c["best_cos"] for c in planted],
        "null_best_cos": [c["null"]["best_cos"] for c in cases],
        "loose_flag": "n_selected",
    }


#: Settings added after results were saved, with the value those results were made with: a saved seed that lacks
#: one is reused by a run that asks for that value (results from before --size-bins matched on frequency only).
SETTINGS_BEFORE: dict[str, object] = {"size_bins": 0, "edit_latents": "matching"}


def seed_settings(cfg: KnownAnswerConfig) -> dict:
    """The settings one seed's result depends on (not which seeds run, where, or how it prints), and the scoring."""
    skip = ("out", "seeds", "threads", "progress")
    return {"scoring": SCORING_VERSION, **{k: v for k, v in cfg.to_dict().items() if k not in skip}}


def run_known_answers(cfg: KnownAnswerConfig, base: str, hook: str) -> dict:
    """Every seed (reusing what an earlier run of the same settings left in `cfg.out`) and the summary."""
    from featalign.io import atomic_write_json, jsonable, read_json

    per_seed = []
    for seed in cfg.seed_list:
        seed_dir = Path(cfg.out) / f"seed-{seed}"
        done = seed_dir / "result.json"
        saved = read_json(done) if done.exists() else {}
        if saved and {**SETTINGS_BEFORE, **saved.get("settings", {})} == seed_settings(cfg):
            per_seed.append(saved["result"])
            continue
        result = run_seed(base, seed_dir, cfg, hook, seed)
        atomic_write_json(done, jsonable({"settings": seed_settings(cfg), "result": result}))
        per_seed.append(result)
    return {"per_seed": per_seed, "summary": summarise(per_seed, cfg.analysis_names)}
