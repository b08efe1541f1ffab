"""Known-answer positive controls (issue 14): does each analysis find a feature that was planted on purpose?

Per seed, one neuron is written into block `l` of the organisms' base (l = the hook's block): it detects a
trigger (by default the token `=`) and writes a seeded random unit direction v, scaled to `--scale` times the
base's median residual norm, into the residual stream (`featalign.organisms.planted`). At the hook the planted
model's activation is exactly the base's plus g(x) v; everything else is the base. The same code with scale 0
gives the null, a function-identical copy. Then the real analysis code runs on them (analyze's crosscoder
settings and training, `attribute`, `drift_study`) and is scored:

- attribution, base vs planted: found = a latent classed `rl-only` whose rl decoder has cosine >= 0.9 with v;
- drift over base, checkpoints 1..5 (the copy before checkpoint j = 3, the planted model from j): found = a
  final top-k feature matching v whose top-k entry checkpoint is j.
- success (`--analyses success`): a second plant fires on `=` and writes a direction *learned* to raise the
  right answer's log-prob on bool / compare problems whose keyword was replaced by add's (the base fails them);
  the real RL-success selection must select a latent matching it; on each task the plant helps, ablating that
  latent in the planted model (its reconstruction: `ablate`; the activation's component along its decoder where
  it fires: `project`) must undo its successes beyond matched random latents, and steering the base along it
  must raise its accuracy.

The same scoring on the nulls (base vs the copy; the series of copies) is the false-positive rate. Detection
power and false-positive rate come with exact Clopper-Pearson intervals over seeds.

    python examples/known_answers.py --organisms-dir DIR --seeds 0-9 --out runs/known_answers
    python examples/known_answers.py --help

Outputs in `--out`: config.json, known_answers.json (config, provenance, per-seed results, power and
false-positive rates), figures/known_answers.png, and per seed the planted folders, activations and
crosscoders (a rerun with the same settings reuses finished seeds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from featalign.analysis.known_answers import KnownAnswerConfig, run_known_answers
from featalign.cli import check_out_dir, run_cli
from featalign.config import cli_config, start_run
from featalign.io import atomic_write_json, jsonable, provenance
from featalign.interventions import SIZE_BINS_HELP

HELP = {
    "out": "output folder (planted organisms, activations, crosscoders, known_answers.json)",
    "organisms_preset": "organisms preset to open/build when --organisms-dir has none: default | tiny",
    "organisms_dir": "organisms folder whose base is planted (read only; default: the cache dir for the preset)",
    "seeds": "seeds, as ranges and numbers (0-9, 0-4,7); each: its own direction v, detector fit, crosscoder seed",
    "trigger": "where the planted neuron fires: token:<t> (one token) or domain:<d>[,<d2>] (those domains' text)",
    "scale": "planted output norm at a trigger, in units of the base's median residual norm at the hook",
    "plant_checkpoint": "drift: the checkpoint from which the series carries the plant",
    "n_checkpoints": "drift: checkpoints in the series",
    "cos_threshold": "decoder cosine with v that counts as the planted latent",
    "analyses": "comma-separated: attribution,drift,success",
    "hook": "hook point (default: the middle residual layer, as analyze); the plant goes into its block",
    "n_tokens": "training activation tokens per model",
    "eval_tokens": "held-out tokens for attribution",
    "variant": "crosscoder variant",
    "n_latents": "latents per crosscoder",
    "k": "batchtopk k",
    "steps": "crosscoder training steps",
    "batch_size": "crosscoder batch",
    "lr": "crosscoder learning rate",
    "top_k": "drift: top-k model-specific features per checkpoint",
    "success_domains": "success: comma-separated domains (>= 2) whose misled problems the planted direction fixes",
    "success_keyword": "success: the domain whose prompt keyword replaces theirs (misleads the base)",
    "success_trigger": "success: where the planted neuron fires (token:= is the answer position)",
    "success_scale": "success: largest norm of the learned output, x the base's median residual norm",
    "success_problems": "success: eval problems per domain for the selection and the interventions",
    "learn_steps": "success: Adam steps fitting the planted direction",
    "n_controls": "success: random latents matched on firing rate per intervention",
    "size_bins": "success: " + SIZE_BINS_HELP,
    "edit_latents": "success: the latents the interventions edit: matching (the selected latents whose decoder "
    "matches the plant) or selected (every selected latent, as the real analysis edits its features)",
    "steer_coef": "success: steering coefficient in units of the latent's typical activation",
    "steer_positions": "success: where the base is steered: last (answer position) | prompt | all | generated",
    "threads": "torch threads",
    "progress": "progress bars (true/false)",
}


def known_answers_figure(summary: dict, per_seed: list[dict], path) -> None:
    """Detection power and false-positive rate per analysis (with intervals), and the best decoder cosine with v
    per seed on the planted case and its null."""
    from featalign.plotting import pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    names = list(summary)
    for i, a in enumerate(names):
        for j, (key, colour) in enumerate((("power", "C2"), ("false_positive_rate", "C3"))):
            r = summary[a][key]
            ax1.bar(i + 0.38 * j, r["rate"], 0.36, color=colour, label=key.replace("_", " ") if i == 0 else None)
            ax1.errorbar(
                i + 0.38 * j, r["rate"], [[r["rate"] - r["low"]], [r["high"] - r["rate"]]], color="k", capsize=3
            )
        for j, case in enumerate(("planted", "null")):
            cos = summary[a][f"{case}_best_cos"]
            ax2.scatter(
                [i + 0.38 * j] * len(cos),
                cos,
                s=12,
                color="C2" if case == "planted" else "C3",
                label=case if i == 0 else None,
            )
    ax1.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax1.set_ylim(0, 1.05)
    ax1.set_title(f"found the plant, {len(per_seed)} seeds (95% CP)")
    ax1.legend(fontsize=7)
    ax2.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax2.set_title("best decoder cosine with v per seed")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    from featalign.analysis.inputs import analysis_hook, open_organisms
    from featalign.models import ModelSpec

    cfg = cli_config(KnownAnswerConfig, HELP, "known_answers.py", __doc__, argv)
    check_out_dir(cfg.out)
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    org = open_organisms(cfg.organisms_preset, cfg.organisms_dir)
    base = str(org.base_dir)
    hook = analysis_hook(cfg.hook, ModelSpec("base", base, role="base"))
    out = start_run(cfg, cfg.out)
    res = run_known_answers(cfg, base, hook)
    known_answers_figure(res["summary"], res["per_seed"], out / "figures" / "known_answers.png")
    # paths as folder names only, so the JSON can be committed (config.json in --out has them in full)
    shown = {k: Path(v).name if k in ("out", "organisms_dir") and v else v for k, v in cfg.to_dict().items()}
    results = {
        "config": shown,
        **provenance(),
        "organisms": {"preset": org.config.preset, "seed": org.config.seed, "base": "base"},
        "hook": hook,
        "planted": (
            f"one neuron appended to block {hook.split('.')[1]}'s MLP, firing on {cfg.trigger}, writing a seeded "
            f"random unit direction v at {cfg.scale} x the base's median residual norm; null: the same at scale 0"
        ),
        "planted_success": (
            f"one neuron appended to block {hook.split('.')[1]}'s MLP, firing on {cfg.success_trigger}, writing a "
            f"direction learned to raise the answer log-prob of {cfg.success_domains} problems with "
            f"{cfg.success_keyword}'s keyword (at most {cfg.success_scale} x the base's median residual norm); "
            "null: the same at scale 0"
        ),
        **res,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(out / "known_answers.json", jsonable(results))
    for a, s in res["summary"].items():
        p, f = s["power"], s["false_positive_rate"]
        print(
            f"{a}: power {p['k']}/{p['n']} [{p['low']:.2f}, {p['high']:.2f}]; "
            f"false positives {f['k']}/{f['n']} [{f['low']:.2f}, {f['high']:.2f}]"
        )
        for key in ("power_ablation", "power_projection", "power_steer") if a == "success" else ():
            r = s[key]
            print(f"  {key.replace('_', ' ')}: {r['k']}/{r['n']} [{r['low']:.2f}, {r['high']:.2f}]")
    return results


if __name__ == "__main__":
    sys.exit(run_cli(main, "known_answers.py", sys.argv[1:]))
