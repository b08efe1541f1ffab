import numpy as np
import pytest
import torch

from featalign.analysis.attribution import (
    AttributionConfig, attribute, classify, decoder_cosine, decoder_norms, decoder_vectors, encoder_stats,
    latent_scaling, model_attribution_scores, relative_norm,
)
from tests.analysis.helpers import hand_crosscoder


def _two_model_cc():
    dec = torch.tensor([
        [[3.0, 4.0], [0.0, 5.0]],  # norms 5, 5; cos = 20/25
        [[1.0, 0.0], [0.0, 0.0]],  # only in a
        [[0.0, 1.0], [2.0, 0.0]],  # norms 1, 2; cos 0
    ])
    return hand_crosscoder(dec, models=("a", "b"))


def test_metrics_hand_computed():
    cc = _two_model_cc()
    n = decoder_norms(cc)
    assert torch.allclose(n, torch.tensor([[5.0, 5.0], [1.0, 0.0], [1.0, 2.0]]))
    mas = model_attribution_scores(n)
    assert torch.allclose(mas, torch.tensor([[0.5, 0.5], [1.0, 0.0], [1 / 3, 2 / 3]]))
    assert torch.allclose(mas.sum(-1), torch.ones(3))
    assert torch.allclose(relative_norm(n, 0, 1), torch.tensor([0.5, 0.0, 2 / 3]))
    assert torch.allclose(decoder_cosine(decoder_vectors(cc), 0, 1), torch.tensor([0.8, 0.0, 0.0]))
    assert classify(n, ("a", "b")) == ["shared", "a-only", "mixed"]


def test_encoder_stats_of_one_model_match_a_token_loop():
    """firing rate, mean activation and the size of what a latent writes (mean_recon_norm) for model b's latents,
    against a loop over tokens of `encode_as` and each latent's own reconstruction vector."""
    cc = _two_model_cc()
    x_NMD = torch.randn(50, 2, 2, generator=torch.Generator().manual_seed(0)).unsqueeze(2)  # [N, M, H=1, D]
    stats = encoder_stats(cc, x_NMD, batch=7, model="b")
    fired, act, recon = torch.zeros(3), torch.zeros(3), torch.zeros(3)
    for x_MHD in x_NMD:
        f_L = cc.encode_as(x_MHD[1:2], "b")[0]
        for latent in range(3):
            if f_L[latent] > 0:
                fired[latent] += 1
                act[latent] += f_L[latent]
                recon[latent] += (f_L[latent] * cc.W_dec_LMHD[latent, 1]).norm()
    assert torch.allclose(stats["firing_rate"], fired / 50)
    assert torch.allclose(stats["mean_act"], act / fired.clamp_min(1), atol=1e-6)
    assert torch.allclose(stats["mean_recon_norm"], recon / fired.clamp_min(1), atol=1e-5)
    assert fired[2] > 0 and stats["mean_recon_norm"][1] == 0  # latent 1 writes nothing into b
    assert "mean_recon_norm" not in encoder_stats(cc, x_NMD)  # the joint encoding: no one model's decoder


def test_classes_three_models_and_thresholds():
    dec = torch.zeros(4, 3, 2)
    dec[0] = torch.tensor([[1.0, 0], [1.0, 0], [0.9, 0]])  # shared
    dec[1, :2] = torch.tensor([1.0, 0])  # a+b (pair-only)
    dec[2, 2] = torch.tensor([0.0, 1.0])  # c-only
    dec[3] = torch.tensor([[1.0, 0], [0.05, 0], [0.5, 0]])  # b absent (0.05 < 1/9) -> a+c
    n = decoder_norms(hand_crosscoder(dec))
    assert classify(n, ("a", "b", "c")) == ["shared", "a+b", "c-only", "a+c"]
    # a looser absent threshold makes the last one a-only
    assert classify(n, ("a", "b", "c"), AttributionConfig(absent_ratio=0.6, shared_ratio=0.8))[3] == "a-only"
    # dead latents are not classified
    assert classify(n, ("a", "b", "c"), alive_L=torch.tensor([True, False, True, True]))[1] == "dead"
    with pytest.raises(ValueError, match="absent_ratio"):
        AttributionConfig(absent_ratio=0.9, shared_ratio=0.5)


def _planted_shrinkage(n=6000, seed=0):
    """Orthonormal features in D=8; models a (base) and b (tuned). Returns (x [N,2,1,D], crosscoder).

    latent 0: feature on e0 in both models, decoded in both (genuinely shared)
    latent 1: feature on e2 in BOTH models' activations, but the crosscoder's a-decoder shrank to 0
              (looks b-only; an artifact of complete shrinkage)
    latent 2: feature on e4 only in b's activations (genuinely b-only)
    latents 3, 4: feature on e5 in both models, split into a b-only latent (3) and an a-only latent (4)
              that fire together (latent decoupling)
    """
    g = torch.Generator().manual_seed(seed)
    D = 8
    e = torch.eye(D)
    mags = (0.5 + torch.rand(n, 4, generator=g)) * (torch.rand(n, 4, generator=g) < 0.3)
    xa = mags[:, 0:1] * e[0] + mags[:, 1:2] * e[2] + mags[:, 3:4] * e[5]
    xb = mags[:, 0:1] * e[0] + mags[:, 1:2] * e[2] + mags[:, 2:3] * e[4] + mags[:, 3:4] * e[5]
    x = torch.stack([xa, xb], 1)[:, :, None, :] + 0.01 * torch.randn(n, 2, 1, D, generator=g)
    z = torch.zeros(D)
    dec = torch.stack([
        torch.stack([e[0], e[0]]), torch.stack([z, e[2]]), torch.stack([z, e[4]]),
        torch.stack([z, e[5]]), torch.stack([e[5], z]),
    ])
    enc = torch.stack([
        torch.stack([e[0] / 2, e[0] / 2]), torch.stack([z, e[2]]), torch.stack([z, e[4]]),
        torch.stack([z, e[5]]), torch.stack([e[5], z]),
    ])
    return x, hand_crosscoder(dec, enc, models=("a", "b"), b_enc=torch.full((5,), -0.05))


def test_latent_scaling_matches_lstsq():
    x, cc = _planted_shrinkage(n=500)
    ls = latent_scaling(cc, x, batch=128)
    # independent reference: numpy least squares per latent and model
    with torch.no_grad():
        f = cc.encode(x).numpy()
        xh = cc.decode(torch.from_numpy(f)).numpy()[:, :, 0]
    dec = decoder_vectors(cc).numpy()
    xs = x[:, :, 0].numpy()
    for l in range(5):
        owner = int(np.argmax(np.linalg.norm(dec[l], axis=-1)))
        u = dec[l, owner]
        design = (f[:, l:l + 1] * u[None]).reshape(-1, 1)
        for m in range(2):
            err_with_l = xs[:, m] - xh[:, m] + f[:, l:l + 1] * dec[l, m][None]
            for y, got in ((xh[:, m], ls.beta_recon_LM[l, m]), (err_with_l, ls.beta_error_LM[l, m])):
                ref = np.linalg.lstsq(design, y.reshape(-1), rcond=None)[0][0]
                assert got.item() == pytest.approx(ref, abs=1e-4)


def test_latent_scaling_flags_planted_artifacts():
    x, cc = _planted_shrinkage()
    att = attribute(cc, x)
    assert att.classes == ["shared", "b-only", "b-only", "b-only", "a-only"]
    ls = att.ls
    # complete shrinkage: a's error carries latent 1's direction fully
    assert ls.nu_error_LM[1, 0].item() == pytest.approx(1.0, abs=0.05)
    # genuine b-only latent: nothing of it in a
    assert abs(ls.nu_error_LM[2, 0].item()) < 0.05 and abs(ls.nu_recon_LM[2, 0].item()) < 0.05
    # decoupling: a's reconstruction (through latent 4) carries latent 3's direction
    assert ls.nu_recon_LM[3, 0].item() == pytest.approx(1.0, abs=0.05)
    assert att.artifact_L.tolist() == [False, True, False, True, True]
    assert att.classes_ls == ["shared", "b-only?artifact", "b-only", "b-only?artifact", "a-only?artifact"]
    assert att.summary()["n_artifacts"] == 3
    card = att.latent(1)
    assert card["latent_scaling"]["artifact"] and card["class"] == "b-only"
    assert card["firing_rate"] == pytest.approx(0.3, abs=0.03)


def test_mismatched_activations_refused():
    x, cc = _planted_shrinkage(n=100)
    with pytest.raises(ValueError, match=r"do not match the crosscoder \[N, 2, 1, 8\]"):
        attribute(cc, torch.cat([x, x], 1))
    from featalign.analysis.attribution import check_activations

    with pytest.raises(ValueError, match="trained on models"):
        check_activations(cc, x, names=("b", "a"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_inputs_are_refused_naming_rows_and_model(bad):
    """One NaN row used to give NaN betas, '0 artifacts' and NaN FVU without a word."""
    from featalign.crosscoder import evaluate

    cc = _two_model_cc()
    x = torch.randn(50, 2, 1, 2, generator=torch.Generator().manual_seed(0))
    attribute(cc, x), evaluate(cc, x)  # finite inputs pass
    x[[3, 17], 1, 0, 0] = bad
    for fn in (attribute, evaluate):
        with pytest.raises(ValueError, match=r"NaN/inf in 2 of 50 rows \(first at model 'b', hook 'h'\)"):
            fn(cc, x)
