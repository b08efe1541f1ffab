import pytest
import torch

from featalign.crosscoder.config import CrosscoderConfig
from featalign.crosscoder.model import Crosscoder
from featalign.evaluation import eval_problems
from featalign.generation import decode
from featalign.interventions import ablate, clamp, hook_fns, intervene, project, scale, steer, typical_activation
from featalign.models import hf_model_of
from featalign.models import edit_hooks, load_model

HOOK = "blocks.0.hook_resid_post"
L = 64


def _with_tokenizer(bridge):
    return bridge, bridge.tokenizer


def _crosscoder(variant="l1", d_model=32) -> Crosscoder:
    cc = Crosscoder(CrosscoderConfig(models=("base", "rl"), hooks=(HOOK,), d_model=d_model, n_latents=L,
                                     variant=variant, dec_init_norm=0.3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        cc.W_enc.add_(0.1 * torch.randn(cc.W_enc.shape, generator=g))
        cc.b_enc.copy_(0.05 * torch.randn(L, generator=g))
        cc.b_dec.copy_(0.2 * torch.randn(cc.b_dec.shape, generator=g))
        cc.norm_scale.copy_(torch.tensor([[0.7], [1.6]]))
        if variant == "batchtopk":
            cc.variant.threshold.fill_(0.01)
    return cc


@pytest.fixture(scope="module")
def rl(tiny_organisms):
    return _with_tokenizer(load_model(tiny_organisms.model_dir("rl")))


@pytest.fixture(scope="module")
def prompts(rl):
    _, tok = rl
    return [tok(p.prompt)["input_ids"] for p in eval_problems("add", 6)]


def _acts_at(model, ids, hook=HOOK) -> torch.Tensor:
    """Residual stream at `hook` as the downstream layers see it (after any intervention hook)."""
    got = []
    with edit_hooks(model, {hook: lambda r: got.append(r.detach().clone())}):
        hf_model_of(model)(input_ids=ids)
    return got[0]


def _paired_as(cc, x_ND, m) -> torch.Tensor:
    """The paired input `[N, M, 1, D]` whose joint encoding is model m's latents (`encode_as`): x in every
    model's slot, in raw units such that each slot's normalised value is m's normalised x."""
    s = cc.norm_scale[:, 0]
    return torch.stack([x_ND * s[m] / s[j] for j in range(cc.cfg.n_models)], 1)[:, :, None]


def _gen(model, tok, prompts, n=6):
    return decode(model, prompts, n, tok.eos_token_id, tok.pad_token_id)


@pytest.mark.parametrize("variant", ["l1", "batchtopk", "jumprelu"])
def test_edit_encoding_is_encode_as_and_the_joint_encoding_of_the_copied_input(variant):
    cc = _crosscoder(variant)
    x = 3 * torch.randn(50, 32)
    ids = torch.arange(0, L, 3)
    fn = hook_fns(cc, "rl", ablate(ids))[HOOK]
    block = fn.parts[0][1]
    ref = cc.encode(_paired_as(cc, x, 1))[:, ids]
    assert (ref != 0).any()
    torch.testing.assert_close(block.encode(x), ref)
    torch.testing.assert_close(cc.encode_as(x, "rl")[:, ids], ref)
    torch.testing.assert_close(cc.encode_as(x[:, None], 1, latents=ids), ref)


def test_ablate_every_latent_leaves_the_error_term(rl):
    model, _ = rl
    cc = _crosscoder()
    ids = torch.randint(3, 40, (4, 9), generator=torch.Generator().manual_seed(0))
    x = _acts_at(model, ids)
    with intervene(model, cc, "rl", ablate(range(L))):
        x_abl = _acts_at(model, ids)
    f = cc.encode(_paired_as(cc, x.reshape(-1, 32), 1))
    assert (f != 0).any()
    x_hat = cc.decode(f)[:, 1, 0]
    bias = cc.decode(torch.zeros(1, L))[:, 1, 0]
    error = x.reshape(-1, 32) - x_hat
    # x' = x - sum_k f_k d_k = (x - x_hat) + b_dec-part: only the error (plus the constant decoder bias)
    torch.testing.assert_close(x_abl.reshape(-1, 32), error + bias, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(x_abl, x)


def test_clamp_and_scale_match_explicit_formula(rl):
    model, _ = rl
    cc = _crosscoder()
    ids = torch.randint(3, 40, (2, 7), generator=torch.Generator().manual_seed(2))
    feats = [1, 5, 9, 33]
    x = _acts_at(model, ids).reshape(-1, 32)
    f = cc.encode(_paired_as(cc, x, 1))[:, feats]
    d = cc.W_dec_LMHD[feats, 1, 0].detach() / cc.norm_scale[1, 0]
    with torch.no_grad():
        for edit, new in ((clamp(feats, 2.5), torch.full_like(f, 2.5)), (scale(feats, 3.0), 3.0 * f)):
            with intervene(model, cc, "rl", edit):
                got = _acts_at(model, ids).reshape(-1, 32)
            torch.testing.assert_close(got, x + (new - f) @ d, atol=1e-5, rtol=1e-5)


def test_project_removes_the_decoder_span_where_a_latent_fires_against_an_explicit_loop(rl):
    """Reference: Gram-Schmidt by hand over the raw decoder rows, one position at a time; positions where none of
    the latents fires are left bitwise alone."""
    model, _ = rl
    cc = _crosscoder("batchtopk")
    ids = torch.randint(3, 40, (3, 8), generator=torch.Generator().manual_seed(4))
    feats = [2, 9, 30]
    x = _acts_at(model, ids).reshape(-1, 32).double()
    f = cc.encode(_paired_as(cc, x.float(), 1))[:, feats]
    fires = (f > 0).any(1)
    assert fires.any() and (~fires).any()  # both cases are exercised
    basis = []
    for k in feats:  # raw-space decoder rows, orthonormalised one by one
        d = (cc.W_dec_LMHD[k, 1, 0].detach() / cc.norm_scale[1, 0]).double()
        for q in basis:
            d = d - (d @ q) * q
        basis.append(d / d.norm())
    want = x.clone()
    for n in range(x.shape[0]):
        if fires[n]:
            for q in basis:
                want[n] -= (x[n] @ q) * q
    with intervene(model, cc, "rl", project(feats)):
        got = _acts_at(model, ids).reshape(-1, 32).double()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[~fires], x[~fires])
    for q in basis:  # nothing is left along the span where a latent fires
        assert (got[fires] @ q).abs().max() < 1e-4


def test_ablating_nothing_and_zero_steer_are_bitwise_noops(rl, prompts):
    model, tok = rl
    cc = _crosscoder()
    ids = torch.randint(3, 40, (3, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean = hf_model_of(model)(input_ids=ids).logits
        clean_gen = _gen(model, tok, prompts)
        a = torch.ones(3)
        for edit in (ablate([]), project([]), steer([2, 7, 11], 0.0, a), steer([2, 7, 11], 0.0, a, decoder="base")):
            with intervene(model, cc, "rl", edit):
                assert torch.equal(hf_model_of(model)(input_ids=ids).logits, clean)
                g = _gen(model, tok, prompts)
            assert torch.equal(g.completion_ids_BC, clean_gen.completion_ids_BC)


def test_bad_input_gets_clear_errors(rl):
    model, _ = rl
    cc = _crosscoder()
    with pytest.raises(ValueError, match=r"latents 0\.\.63"):
        hook_fns(cc, "rl", ablate([3, 64]))
    with pytest.raises(ValueError, match=r"latents 0\.\.63"):
        hook_fns(cc, "rl", steer([-1], 1.0, [1.0]))
    with pytest.raises(ValueError, match="not one of the crosscoder's models"):
        hook_fns(cc, "sft", ablate([3]))
    with pytest.raises(ValueError, match="steer decoder"):
        hook_fns(cc, "rl", steer([3], 1.0, [1.0], decoder="sft"))
    with pytest.raises(ValueError, match="trained on"):
        hook_fns(cc, "rl", ablate([3]), hooks=["blocks.1.hook_resid_post"])
    with pytest.raises(ValueError, match="positions"):
        hook_fns(cc, "rl", ablate([3]), positions="answer")
    with pytest.raises(ValueError, match="typical"):
        steer([1, 2], 1.0, [1.0])
    with pytest.raises(ValueError, match="d_model"):
        with intervene(model, _crosscoder(d_model=16), "rl", ablate([3])):
            pass


def test_typical_activation_is_mean_of_nonzero():
    cc = _crosscoder()
    x = 3 * torch.randn(300, 2, 1, 32)
    for model, f in ((None, cc.encode(x)), ("rl", cc.encode(_paired_as(cc, x[:, 1, 0], 1)))):
        a = typical_activation(cc, x, [0, 1, 2], batch=64, model=model)
        for i in range(3):
            nz = f[:, i][f[:, i] != 0]
            assert nz.numel() and abs(float(a[i]) - float(nz.mean())) < 1e-5


def test_steer_is_active_during_generation_at_chosen_positions(rl, prompts):
    model, tok = rl
    cc = _crosscoder()
    feats, a = [4, 8, 15, 16], torch.full((4,), 1.0)
    with torch.no_grad():
        clean = _gen(model, tok, prompts)
        for positions in ("all", "generated"):
            with intervene(model, cc, "rl", steer(feats, 200.0, a, decoder="base"), positions=positions):
                got = _gen(model, tok, prompts)
            assert not torch.equal(got.completion_ids_BC, clean.completion_ids_BC), positions

        # generated-only: the prompt forward (first call) is untouched, bitwise
        def first_call(positions):
            seen = []
            with intervene(model, cc, "rl", steer(feats, 200.0, a), positions=positions):
                with edit_hooks(model, {HOOK: lambda r: seen.append(r.clone())}):
                    _gen(model, tok, prompts)
            return seen
        unhooked = []
        with edit_hooks(model, {HOOK: lambda r: unhooked.append(r.clone())}):
            _gen(model, tok, prompts)
        gen_only, every = first_call("generated"), first_call("all")
        assert torch.equal(gen_only[0], unhooked[0])
        assert not torch.equal(every[0], gen_only[0])
        assert len(gen_only) > 1 and not torch.equal(gen_only[1], every[1])

        # prompt-only: generated positions at the hook equal an unhooked replay of the same tokens
        seen = []
        with intervene(model, cc, "rl", steer(feats, 200.0, a), positions="prompt"):
            with edit_hooks(model, {HOOK: lambda r: seen.append(r.clone())}):
                g = _gen(model, tok, prompts)
        P, C = g.prompt_ids_BP.shape[1], len(seen) - 1
        full_ids = torch.cat([g.prompt_ids_BP, g.completion_ids_BC[:, :C]], 1)
        attn = torch.cat([g.prompt_mask_BP, torch.ones_like(g.completion_ids_BC[:, :C])], 1)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        ref = []
        with edit_hooks(model, {HOOK: lambda r: ref.append(r.clone())}):
            hf_model_of(model)(input_ids=full_ids, attention_mask=attn, position_ids=pos)
        ref = ref[0]
        assert C >= 1
        torch.testing.assert_close(torch.cat(seen[1:], 1), ref[:, P:], atol=1e-5, rtol=1e-5)
        real = g.prompt_mask_BP.bool()
        assert not torch.allclose(seen[0][real], ref[:, :P][real])


def test_bridge_generation_sees_the_edit(tiny_organisms, rl, prompts):
    from transformer_lens.model_bridge import TransformerBridge

    _, tok = rl
    bridge = TransformerBridge.boot_transformers(str(tiny_organisms.model_dir("rl")), device="cpu")
    cc = _crosscoder()
    with torch.no_grad():
        clean = _gen(bridge, tok, prompts)
        with intervene(bridge, cc, "rl", steer([4, 8], 200.0, [1.0, 1.0])):
            got = _gen(bridge, tok, prompts)
    assert not torch.equal(got.completion_ids_BC, clean.completion_ids_BC)


def test_prompt_len_splits_a_full_forward(rl):
    model, _ = rl
    cc = _crosscoder()
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        x = _acts_at(model, ids)
        with intervene(model, cc, "rl", steer([4, 8], 5.0, [1.0, 1.0]), positions="generated", prompt_len=5):
            gen_only = _acts_at(model, ids)
        with intervene(model, cc, "rl", steer([4, 8], 5.0, [1.0, 1.0]), positions="prompt", prompt_len=5):
            prompt_only = _acts_at(model, ids)
    assert torch.equal(gen_only[:, :5], x[:, :5]) and not torch.allclose(gen_only[:, 5:], x[:, 5:])
    assert torch.equal(prompt_only[:, 5:], x[:, 5:]) and not torch.allclose(prompt_only[:, :5], x[:, :5])


def test_last_edits_only_the_prompts_last_column(rl):
    """positions='last' (the answer position): a steer there moves column prompt_len - 1 by exactly the steer vector
    coef * sum_k a_k d_k (raw space), and no other column at the hook."""
    model, _ = rl
    cc = _crosscoder()
    ids = torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        x = _acts_at(model, ids)
        with intervene(model, cc, "rl", steer([4, 8], 5.0, [1.0, 2.0]), positions="last", prompt_len=5):
            last_only = _acts_at(model, ids)
        with intervene(model, cc, "rl", steer([4, 8], 5.0, [1.0, 2.0]), positions="last"):
            whole = _acts_at(model, ids)  # one call: the whole sequence is the prompt, its last column is 8
    d = cc.W_dec_LMHD[[4, 8], 1, 0] / cc.norm_scale[1, 0]  # rl's decoder rows in raw space
    expect = 5.0 * (1.0 * d[0] + 2.0 * d[1])
    assert torch.equal(last_only[:, :4], x[:, :4])
    torch.testing.assert_close(last_only[:, 4] - x[:, 4], expect.expand(2, -1), atol=1e-5, rtol=1e-4)
    assert torch.equal(last_only[:, 5:], x[:, 5:])  # generated columns: not edited (and at this hook, not yet reached)
    assert torch.equal(whole[:, :8], x[:, :8])
    torch.testing.assert_close(whole[:, 8] - x[:, 8], expect.expand(2, -1), atol=1e-5, rtol=1e-4)


def test_feature_ids_and_values_are_validated_at_every_entry_point():
    """ablate([3,3,3]) used to subtract latent 3 three times, ablate([1.7]) to edit latent 1, clamp(inf)
    to make every logit NaN."""
    from featalign.interventions import Edit

    for bad, match in (([3, 3, 3], r"\[3\] are given more than once"), ([1.7], "must be integers, got 1.7"),
                       (torch.tensor([0.0, 2.0]), "must be integers"), ([True, False], "must be integers")):
        with pytest.raises(ValueError, match=match):
            ablate(bad)
    for make in (lambda v: clamp([0], v), lambda v: scale([0], v), lambda v: clamp([0, 1], torch.tensor([1.0, v]))):
        for v in (float("inf"), float("-inf"), float("nan")):
            with pytest.raises(ValueError, match="must be finite"):
                make(v)
    assert ablate(torch.tensor([2, 5])).features == ablate([2, 5]).features == (2, 5)
    assert ablate(torch.tensor([False, True, True])).features == (1, 2)
    import numpy as np

    assert clamp(np.array([4, 1], dtype=np.int64), 2.0).features == (4, 1)
    cc = _crosscoder()
    with pytest.raises(ValueError, match="more than once"):  # an Edit built by hand is checked too
        hook_fns(cc, "base", Edit("ablate", (3, 3)))
    with pytest.raises(ValueError, match="must be finite"):
        hook_fns(cc, "base", Edit("scale", (3,), float("nan")))
