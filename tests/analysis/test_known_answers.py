"""The known-answer harness on the tiny organisms: with a planted direction the real attribution and drift code
name a latent matching it; on the scale-0 null (a function-identical copy, same code path) nothing matches."""

from __future__ import annotations

import pytest
import torch

from featalign.analysis.known_answers import (
    KnownAnswerConfig,
    attribution_case,
    drift_case,
    intervention_verdict,
    plant_capture,
    plant_pair,
    rate,
    score_success,
    seed_activations,
    success_case,
    success_pair,
    summarise_success,
)
from featalign.cli import UsageError
from featalign.organisms.planted import load_plant

# tiny: d_model 32, 2 blocks; the hook is blocks.0.hook_resid_post and the plant goes into block 0
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_case(tiny_organisms, tmp_path_factory):
    out = tmp_path_factory.mktemp("known")
    cfg = KnownAnswerConfig(
        out=str(out),
        seeds="1",
        scale=2.0,
        n_tokens=3000,
        eval_tokens=1500,
        n_latents=64,
        steps=300,
        top_k=8,
        n_checkpoints=3,
        plant_checkpoint=2,
    )
    base = str(tiny_organisms.root / "base")
    planted, null = plant_pair(base, out / "organisms", cfg, layer=0, seed=1)
    dirs = {"base": base, "planted": planted, "null": null}
    x_train, x_eval = seed_activations(out / "activations", dirs, HOOK, cfg, seed=1)
    from featalign.analysis.config import check_shared_settings

    acfg = check_shared_settings(cfg)
    acfg.seed = 1
    return out, cfg, acfg, dirs, x_train, x_eval, load_plant(planted).direction_D


def test_the_plant_is_in_the_cached_activations_exactly(tiny_case):
    _, _, _, _, x_train, _, v = tiny_case
    amplitude = load_plant(tiny_case[3]["planted"]).amplitude
    diff = x_train[:, 1, 0] - x_train[:, 0, 0]  # planted - base at the hook
    fired = diff.norm(dim=-1) > 0.1 * amplitude
    assert 0.02 < float(fired.float().mean()) < 0.15  # the trigger '=' is ~5% of the tokens
    moved = diff.norm(dim=-1) > 1e-4  # (silu's tail moves other positions a little, along v too)
    cos = torch.nn.functional.cosine_similarity(diff[moved], v[None], dim=-1)
    assert float(cos.min()) > 0.999  # only along v
    assert float((x_train[:, 2] - x_train[:, 0]).abs().max()) < 1e-4  # the scale-0 copy is the base


def test_attribution_names_the_planted_latent_and_not_on_the_null(tiny_case):
    out, cfg, acfg, _, x_train, x_eval, v = tiny_case
    planted = attribution_case(out / "cc" / "p", x_train, x_eval, 1, v, HOOK, acfg, cfg)
    null = attribution_case(out / "cc" / "n", x_train, x_eval, 2, v, HOOK, acfg, cfg)
    # planted: one alive latent carries v in the rl decoder and leans to rl; tiny crosscoders absorb part of the
    # base's '=' feature into it (docs/known_answers.md), so its NRN is below the strict rl-only 0.9
    assert planted["best_cos"] > 0.8 and planted["best_nrn"] > 0.55 and planted["best_firing_rate"] > 0.02
    assert planted["trigger_fires_best"] > 0.8  # it fires where the plant moved the activations
    # null: nothing points along v, nothing is model-specific, so nothing is found
    assert null["best_cos"] < 0.6 and not null["found"] and not null["found_lean"]
    assert null["n_rl_only"] == 0 and null["n_rl_leaning"] == 0


def test_drift_names_the_planted_feature_at_its_checkpoint(tiny_case):
    out, cfg, acfg, dirs, x_train, _, v = tiny_case
    planted = drift_case(out / "dp", x_train, dirs, cfg.plant_checkpoint, v, HOOK, acfg, cfg)
    null = drift_case(out / "dn", x_train, dirs, None, v, HOOK, acfg, cfg)
    assert planted["best_cos"] > 0.8 and planted["best_stabilisation"] == cfg.plant_checkpoint
    curve = planted["best_nrn_curve"]  # NRN vs base per checkpoint: ~0.5 (or below) before the plant, up after
    assert curve[cfg.plant_checkpoint - 1] > max(curve[: cfg.plant_checkpoint - 1]) + 0.05
    assert null["best_cos"] < 0.6 and not null["found"]


def test_rates_and_settings():
    r = rate([True] * 9 + [False])
    assert (r["k"], r["n"]) == (9, 10)
    from scipy.stats import beta

    assert r["low"] == pytest.approx(beta.ppf(0.025, 9, 2)) and r["high"] == pytest.approx(beta.ppf(0.975, 10, 1))
    assert KnownAnswerConfig(seeds="0-2,7").seed_list == [0, 1, 2, 7]
    for bad in ("", "3-1", "0-2,2", "x"):
        with pytest.raises(UsageError, match="--seeds"):
            KnownAnswerConfig(seeds=bad)
    with pytest.raises(UsageError, match="plant-checkpoint"):
        KnownAnswerConfig(plant_checkpoint=6)
    with pytest.raises(UsageError, match="--trigger"):
        KnownAnswerConfig(trigger="equals")
    with pytest.raises(UsageError, match="--analyses"):
        KnownAnswerConfig(analyses="attribution,cards")
    with pytest.raises(UsageError, match="--success-domains: the selection intersects"):
        KnownAnswerConfig(success_domains="bool")
    with pytest.raises(UsageError, match="--success-keyword"):
        KnownAnswerConfig(success_keyword="nosuch")
    with pytest.raises(UsageError, match="--steer-positions"):
        KnownAnswerConfig(steer_positions="first")
    with pytest.raises(UsageError, match="--n-controls"):
        KnownAnswerConfig(n_controls=0)


def test_success_scoring_on_constructed_cases():
    cos = torch.tensor([0.1, 0.95, 0.5, 0.97, -0.2])
    hit = score_success([0, 1, 2], cos, 0.9)  # 3 matches better but was not selected
    assert hit["found"] and hit["n_matching"] == 1 and hit["target_latent"] == 1 and hit["target_selected"]
    assert (hit["best_latent"], hit["best_selected"]) == (3, False) and hit["edited_latents"] == [1]
    split = score_success([3, 0, 1], cos, 0.9)  # the plant split over two selected latents: both are edited
    assert split["edited_latents"] == [1, 3] and split["target_latent"] == 3
    miss = score_success([0, 2], cos, 0.9)
    assert not miss["found"] and miss["target_latent"] == 2 and miss["target_cos"] == pytest.approx(0.5)
    assert miss["edited_latents"] == [2]
    none = score_success([], cos, 0.9)  # nothing selected: the interventions edit the best-matching latent
    assert not none["found"] and none["target_latent"] == 3 and not none["target_selected"]

    def row(sub_delta, sub_p, ci_low, gain_low=0.05, proj=(-0.9, 1 / 21)):
        return {"plant_gain": {"ci_low": gain_low}, "ablate": {"subset_delta": sub_delta, "subset_control_p": sub_p},
                "project": {"subset_delta": proj[0], "subset_control_p": proj[1]}, "steer": {"ci_low": ci_low}}

    p_min = 1 / 21
    good = intervention_verdict({"a": row(-0.8, p_min, 0.02), "b": row(-0.5, p_min, 0.1)}, 20)
    assert good["ablation_beats_controls"] and good["steer_helps"] and good["control_p_min"] == pytest.approx(p_min)
    assert good["projection_beats_controls"] and good["helped_tasks"] == ["a", "b"]
    one_task_short = intervention_verdict({"a": row(-0.8, p_min, 0.02), "b": row(-0.5, 2 / 21, 0.0)}, 20)
    assert not one_task_short["ablation_beats_controls"] and not one_task_short["steer_helps"]
    assert not intervention_verdict({"a": row(0.1, p_min, 0.02)}, 20)["ablation_beats_controls"]  # a gain is no loss
    assert not intervention_verdict({"a": row(None, None, 0.02)}, 20)["ablation_beats_controls"]  # no subset
    # projection judged on its own rows: a projection short of the controls fails while the ablation passes
    mixed = intervention_verdict({"a": row(-0.8, p_min, 0.02, proj=(-0.3, 3 / 21))}, 20)
    assert mixed["ablation_beats_controls"] and not mixed["projection_beats_controls"]
    # a task the plant does not help (its own gain's interval reaches 0) is not judged: nothing there to undo
    unhelped = intervention_verdict({"a": row(-0.8, p_min, 0.02), "b": row(0.0, 1.0, -0.1, gain_low=-0.01)}, 20)
    assert unhelped["helped_tasks"] == ["a"] and unhelped["ablation_beats_controls"] and unhelped["steer_helps"]
    nothing = intervention_verdict({"b": row(-0.8, p_min, 0.2, gain_low=0.0)}, 20)  # no helped task: nothing met
    assert nothing["helped_tasks"] == [] and not nothing["ablation_beats_controls"] and not nothing["steer_helps"]
    assert not nothing["projection_beats_controls"]


def test_the_real_selection_finds_a_direction_written_into_hand_made_latents():
    """The selection (rl_success_features) on latents where one latent (decoder ~ v) carries every success and the
    null (rl = base): score_success finds it in the first, and the second has no sample to select from."""
    import numpy as np

    from featalign.analysis.success_features import SuccessConfig, TooFewSamplesError, rl_success_features

    g = np.random.default_rng(0)
    S, L, PLANTED = 200, 30, 7
    f_base, f_rl, bc, rc = {}, {}, {}, {}
    for t in ("bool", "compare"):
        base_ok = g.random(S) < 0.3
        rl_ok = base_ok | (g.random(S) < 0.6)
        fb = torch.from_numpy(g.random((S, L))).float()
        fr = fb.clone()
        fr[torch.from_numpy(rl_ok & ~base_ok), PLANTED] += 2.0
        f_base[t], f_rl[t], bc[t], rc[t] = fb, fr, base_ok, rl_ok
    res = rl_success_features(f_rl, f_base, bc, rc, SuccessConfig(n_null=5, n_boot=20))
    dec = torch.randn(L, 16, generator=torch.Generator().manual_seed(0))
    v = dec[PLANTED] + 0.1 * torch.randn(16, generator=torch.Generator().manual_seed(1))
    from featalign.analysis.known_answers import cosine_to

    scored = score_success(res.features, cosine_to(dec, v), 0.9)
    assert res.features == [PLANTED] and scored["found"] and scored["target_latent"] == PLANTED
    with pytest.raises(TooFewSamplesError, match="bool: 0"):
        rl_success_features(f_base, f_base, bc, bc, SuccessConfig(n_null=5, n_boot=5))
    summary = summarise_success(
        [{"planted": scored | {"ablation_beats_controls": True, "projection_beats_controls": True, "steer_helps": False}, "null": score_success([], cosine_to(dec, v), 0.9)}]
    )
    assert summary["power"]["k"] == 1 and summary["false_positive_rate"]["k"] == 0
    assert summary["power_ablation"]["k"] == 1 and summary["power_steer"]["k"] == 0
    assert summary["power_projection"]["k"] == 1


def test_the_example_refuses_bad_input_before_any_work(tmp_path, capsys):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "known_answers.py"
    spec = importlib.util.spec_from_file_location("known_answers_example", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["known_answers_example"] = mod
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    assert "--steer-positions" in capsys.readouterr().out
    for bad in (["--seeds", "3-1"], ["--trigger", "token"], ["--scale", "-1"], ["--analyses", "cards"],
                ["--analyses", "success", "--success-domains", "bool"], ["--success-scale", "-1"], ["--size-bins", "-1"],
                ["--edit-latents", "all"]):
        with pytest.raises(UsageError):
            mod.main([*bad, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_success_case_on_the_tiny_organisms(tiny_organisms, tmp_path):
    """End to end on the tiny organisms (small settings): the learned plant creates base-fail / planted-success
    samples on the misled problems and the null none; the selection runs; ablating the chosen latent in the
    planted model loses successes."""
    out = tmp_path
    cfg = KnownAnswerConfig(
        out=str(out), seeds="0", analyses="success", n_tokens=3000, eval_tokens=1500, n_latents=64, steps=300,
        success_problems=150, learn_steps=60, n_controls=3,
    )
    base = str(tiny_organisms.root / "base")
    planted, null = success_pair(base, out / "organisms", cfg, layer=0, seed=0)
    dirs = {"base": base, "planted": planted, "null": null}
    x_train, x_eval = seed_activations(out / "activations", dirs, HOOK, cfg, seed=0)
    from featalign.analysis.config import check_shared_settings

    acfg = check_shared_settings(cfg)
    v = load_plant(planted).direction_D
    got = success_case(out / "p", x_train, x_eval, 1, dirs, v, HOOK, acfg, cfg, seed=0)
    nul = success_case(out / "n", x_train, x_eval, 2, dirs, v, HOOK, acfg, cfg, seed=0)
    assert sum(got["n_success"].values()) >= 16 and sum(nul["n_success"].values()) == 0
    assert nul["acc_rl"] == nul["acc_base"] and not nul["found"] and "refused" in nul["selection"]
    assert got["n_selected"] >= 1 and got["target_selected"]
    assert all(r["ablate"]["subset_delta"] < 0 for r in got["interventions"].values())
    assert 0 < got["plant_capture"]["ablate_share_of_move"]["median"] and got["plant_capture"]["n_trigger_tokens"] > 0


def test_a_seed_saved_before_size_bins_is_reused_only_for_frequency_matching(tmp_path, monkeypatch):
    """A seed's result saved before `size_bins` and `edit_latents` existed (its settings lack the keys) matched its
    controls on frequency only and edited the matching latents: a run with those values reuses it, a run with
    size-matched controls or editing every selected latent recomputes it."""
    import json
    from pathlib import Path

    from featalign.analysis import known_answers as ka

    committed = json.loads(
        (Path(__file__).resolve().parents[2] / "docs" / "data" / "known_answers_success_analysis_settings.json").read_text()
    )
    saved = committed["per_seed"][0]
    fields = {k: v for k, v in committed["config"].items() if k not in ("out", "seeds", "organisms_dir")}
    cfg = KnownAnswerConfig(**{**fields, "out": str(tmp_path), "seeds": str(saved["seed"])})
    settings = {k: v for k, v in ka.seed_settings(cfg).items() if k not in ("size_bins", "edit_latents")}
    (tmp_path / f"seed-{saved['seed']}").mkdir()
    (tmp_path / f"seed-{saved['seed']}" / "result.json").write_text(json.dumps({"settings": settings, "result": saved}))

    def recompute(*args, **kwargs):
        raise RuntimeError("recomputed")

    monkeypatch.setattr(ka, "run_seed", recompute)
    assert ka.run_known_answers(cfg, "base", "hook")["per_seed"] == [saved]
    with pytest.raises(RuntimeError, match="recomputed"):
        ka.run_known_answers(KnownAnswerConfig(**{**cfg.to_dict(), "size_bins": 3}), "base", "hook")
    # ... and, saved before `edit_latents` existed, it edited the matching latents: reused for those only
    with pytest.raises(RuntimeError, match="recomputed"):
        ka.run_known_answers(KnownAnswerConfig(**{**cfg.to_dict(), "edit_latents": "selected"}), "base", "hook")


def test_plant_capture_on_a_hand_made_crosscoder():
    """One latent that reads the planted model's activation along v at 0.5 and writes 0.8 v back: ablating it
    removes 0.5 * 0.8 = 0.4 of a move a·v at every trigger token, whatever a; tokens the plant did not move are
    not counted; a latent orthogonal to v removes none of it."""
    from featalign.crosscoder import Crosscoder, CrosscoderConfig

    D = 4
    cc = Crosscoder(CrosscoderConfig(models=("base", "rl"), hooks=("h",), d_model=D, n_latents=2, variant="l1"))
    v = torch.tensor([1.0, 2.0, 0.0, 2.0])
    v_hat, w = v / v.norm(), torch.tensor([0.0, 0.0, 1.0, 0.0])  # w orthogonal to v
    with torch.no_grad():
        cc.W_enc.zero_(), cc.b_enc.zero_(), cc.W_dec.zero_()
        cc.W_enc[D:, 0] = 0.5 * v_hat  # the rl block; encode_as reads the rl activation in every block
        cc.W_enc[D:, 1] = w
        cc.W_dec[0, D:] = 0.8 * v_hat
        cc.W_dec[1, D:] = w
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, D, generator=g)
    base -= (base @ v_hat)[:, None] * v_hat  # no component along v, so the planted one is the move
    a = 5 + 10 * torch.rand(50, generator=g)
    planted = base + (a * (torch.arange(50) < 20))[:, None] * v_hat  # moved at the first 20 tokens only
    xe = torch.stack([base, planted], 1)[:, :, None, :]
    got = plant_capture(cc, xe, [0], v)
    assert got["n_trigger_tokens"] == 20
    share = got["ablate_share_of_move"]
    assert share["q25"] == pytest.approx(0.4, abs=1e-5) and share["q75"] == pytest.approx(0.4, abs=1e-5)
    assert got["median_move_along_v"] == pytest.approx(float(a[:20].median()), rel=1e-5)
    assert plant_capture(cc, xe, [1], v)["ablate_share_of_move"]["median"] == pytest.approx(0.0, abs=1e-6)
    # the writers: latent 0 writes 0.4 of the mean move and matches v; latent 1 writes nothing along v
    assert got["writers"]["n"] == 1 and got["writers"]["n_matching"] == 1
    assert got["writers"]["share"] == pytest.approx(0.4, abs=1e-5) and got["writers"]["cos"] == [pytest.approx(1.0)]
    # the same move split over two latents at 45 degrees either side of v, each writing half: two writers, none
    # matching at cos 0.9 (cos 45 degrees = 0.71), together 0.4 again
    u = torch.tensor([0.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        for i, sign in ((0, 1.0), (1, -1.0)):
            d = (v_hat + sign * u) / 2**0.5  # unit, cos 0.71 with v
            cc.W_enc[D:, i] = 0.5 * v_hat
            cc.W_dec[i, D:] = 0.8 * d / 2**0.5  # along v: 0.8 * 0.71 * 0.71 = 0.4 of the latent's activation, halved
    split = plant_capture(cc, xe, [0], v)
    assert split["writers"]["n"] == 2 and split["writers"]["n_matching"] == 0
    assert split["writers"]["share"] == pytest.approx(0.4, abs=1e-5)
    assert split["ablate_share_of_move"]["median"] == pytest.approx(0.2, abs=1e-5)
