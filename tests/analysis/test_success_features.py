import numpy as np
import pytest
import torch

from featalign.analysis.success_features import (
    SuccessConfig, TooFewSamplesError, agreement, feature_scores, gradient_attribution, pairwise_overlap,
    rl_success_features, sample_latents, select_features, success_mask,
)

SUCCESS = [3, 7, 11]
GENERIC = [40, 41]


def _with_tokenizer(bridge):
    return bridge, bridge.tokenizer


def _planted(n_tasks=3, S=300, L=50, seed=0):
    """Latents [S, L] of base and RL per task. On base-fail/RL-success samples RL adds +1 to the
    shared success features and to one task-specific feature; on every sample RL adds 0.15 to two
    generic features (a difference unrelated to success)."""
    g = np.random.default_rng(seed)
    f_rl, f_base, bc, rc = {}, {}, {}, {}
    for t in range(n_tasks):
        name = f"task{t}"
        base_ok = g.random(S) < 0.4
        rl_ok = base_ok | (g.random(S) < 0.4)
        win = ~base_ok & rl_ok
        fb = torch.from_numpy(g.random((S, L))).float()
        fr = fb + 0.02 * torch.from_numpy(g.standard_normal((S, L))).float()
        w = torch.from_numpy(win)
        for k in SUCCESS + [20 + t]:
            fr[w, k] += 1.0
        for k in GENERIC:
            fr[:, k] += 0.15
        f_rl[name], f_base[name], bc[name], rc[name] = fr, fb, base_ok, rl_ok
    return f_rl, f_base, bc, rc


def test_selection_pieces_hand_computed():
    assert success_mask([1, 0, 0, 1], [1, 1, 0, 0]).tolist() == [False, True, False, False]
    s = feature_scores(torch.tensor([[3.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    assert s.tolist() == [1.0, 0.5, -0.5]
    assert select_features(s, 0.2) == {0, 1}
    assert select_features(s, 0.6) == {0}
    assert select_features(torch.tensor([-1.0, 0.0]), 0.2) == set()
    ov = pairwise_overlap({"a": {1, 2, 3, 4}, "b": {3, 4}})
    assert ov["a|b"] == {"overlap": 1.0, "jaccard": 0.5, "intersection": 2}


def test_planted_success_features_recovered():
    res = rl_success_features(*_planted(), SuccessConfig(n_null=30, n_boot=30))
    assert res.features == SUCCESS and res.majority == SUCCESS
    for t in range(3):
        assert set(res.per_task[f"task{t}"]) == set(SUCCESS) | {20 + t}
    assert all(v["overlap"] == pytest.approx(0.75) for v in res.overlap.values())
    # null: random subsets dilute the success signal, so the generic RL differences pass the threshold too
    assert res.null["size_mean"] > len(SUCCESS)
    assert res.bootstrap["size_95"] == [3.0, 3.0]
    assert all(v == 1.0 for v in res.bootstrap["selection_frequency"].values())
    s = res.summary()
    assert s["n_features"] == 3 and s["skipped"] == {}


def test_too_few_samples_message_states_count():
    f_rl, f_base, bc, rc = _planted()
    rc["task1"] = bc["task1"].copy()  # RL never beats the base on task1
    rc["task1"][np.nonzero(~bc["task1"])[0][:3]] = True  # ... except 3 times
    res = rl_success_features(f_rl, f_base, bc, rc, SuccessConfig(n_null=2, n_boot=2))
    assert "only 3 base-fail/RL-success samples" in res.skipped["task1"] and res.tasks == ["task0", "task2"]
    with pytest.raises(TooFewSamplesError, match=r"task1: 3"):
        rl_success_features(f_rl, f_base, bc, rc, SuccessConfig(min_tasks=3))


def test_agreement():
    a = torch.arange(10.0)
    assert agreement(a, a * 2, 3) == pytest.approx({"spearman": 1.0, "spearman_p": 0.0, "top_k": 3, "top_k_jaccard": 1.0})
    assert agreement(a, -a, 3)["top_k_jaccard"] == 0.0


def test_gradient_attribution_matches_finite_difference(tiny_organisms):
    from featalign.models import hf_model_of
    from featalign.models import edit_hooks, load_model
    from featalign.evaluation import eval_problems
    from featalign.analysis.success_features import prompt_batch
    from tests.analysis.helpers import hand_crosscoder

    model, tok = _with_tokenizer(load_model(tiny_organisms.model_dir("rl")))
    D = model.cfg.d_model
    g = torch.Generator().manual_seed(0)
    cc = hand_crosscoder(torch.randn(16, 2, D, generator=g) * 0.5, models=("base", "rl"),
                        hook="blocks.0.hook_resid_post")
    probs = eval_problems("sort", 3)
    attr = gradient_attribution(cc, model, tok, probs, 1, "last")  # [S, L]
    lat = sample_latents(cc, model, tok, probs, 1, "last")
    assert attr.shape == lat.shape == (3, 16)
    assert ((attr != 0) <= (lat > 0)).all()  # no activation -> no attribution

    # finite difference: scaling latent k at the last prompt token by (1 + eps) adds eps f_k d_k there
    ids, _, last = prompt_batch(tok, probs[:1], with_answer=True)
    n_ans = len(tok(probs[0].answer, add_special_tokens=False)["input_ids"]) + 1
    k = int(lat[0].argmax())

    def logp(eps):
        def fn(resid):
            x = resid.detach().clone()
            f = cc.encode_as(x[0, last[0]][None, None], 1)[0, k]
            x[0, last[0]] += eps * f * cc.W_dec_LMHD[k, 1, 0].detach()
            return x
        with torch.no_grad(), edit_hooks(model, {cc.cfg.hooks[0]: fn}):
            lp = torch.log_softmax(hf_model_of(model)(input_ids=ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        s = last[0]
        return lp[s : s + n_ans].sum().item()

    eps = 1e-3
    fd = (logp(eps) - logp(-eps)) / (2 * eps)
    assert attr[0, k].item() == pytest.approx(fd, rel=2e-2, abs=1e-4)
