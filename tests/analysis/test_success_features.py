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


@pytest.mark.parametrize("positions", ["last", "answer_end"])
def test_gradient_attribution_matches_finite_difference(tiny_organisms, positions):
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
    attr = gradient_attribution(cc, model, tok, probs, 1, positions)  # [S, L]
    lat = sample_latents(cc, model, tok, probs, 1, positions)
    assert attr.shape == lat.shape == (3, 16)
    assert ((attr != 0) <= (lat > 0)).all()  # no activation -> no attribution

    # finite difference: scaling latent k at the read position by (1 + eps) adds eps f_k d_k there
    ids, _, last = prompt_batch(tok, probs[:1], with_answer=True)
    n_ans = len(tok(probs[0].answer, add_special_tokens=False)["input_ids"]) + 1
    at = int(last[0]) + (n_ans - 1 if positions == "answer_end" else 0)  # the answer's last token, by hand
    k = int(lat[0].argmax())

    def logp(eps):
        def fn(resid):
            x = resid.detach().clone()
            f = cc.encode_as(x[0, at][None, None], 1)[0, k]
            x[0, at] += eps * f * cc.W_dec_LMHD[k, 1, 0].detach()
            return x
        with torch.no_grad(), edit_hooks(model, {cc.cfg.hooks[0]: fn}):
            lp = torch.log_softmax(hf_model_of(model)(input_ids=ids).logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        s = last[0]
        return lp[s : s + n_ans].sum().item()

    eps = 1e-3
    fd = (logp(eps) - logp(-eps)) / (2 * eps)
    assert attr[0, k].item() == pytest.approx(fd, rel=2e-2, abs=1e-4)


def test_answer_end_reads_the_token_before_eos_of_each_unpadded_sequence(tiny_organisms):
    """`answer_end` latents of a padded batch equal, per sample, the crosscoder encoding of the hook activation
    at the reference answer's last token, taken from that sample's own unpadded prompt + answer sequence."""
    from featalign.evaluation import eval_problems
    from featalign.models import capture_models, load_model
    from tests.analysis.helpers import hand_crosscoder

    model, tok = _with_tokenizer(load_model(tiny_organisms.model_dir("rl")))
    g = torch.Generator().manual_seed(1)
    cc = hand_crosscoder(torch.randn(16, 2, model.cfg.d_model, generator=g) * 0.5, models=("base", "rl"),
                         hook="blocks.0.hook_resid_post")
    probs = eval_problems("add", 3) + eval_problems("sort", 3)  # answers of several lengths: padding differs
    got = sample_latents(cc, model, tok, probs, 1, "answer_end", batch=4)
    for s, p in enumerate(probs):
        seq = tok(p.prompt)["input_ids"] + tok(p.answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([seq + [tok.eos_token_id]])
        acts = capture_models([model], ids, torch.ones_like(ids), cc.cfg.hooks)[0, len(seq) - 1, 0]
        want = cc.encode_as(acts[None].float(), 1)[0]
        torch.testing.assert_close(got[s], want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, sample_latents(cc, model, tok, probs, 1, "last", batch=4))
