"""Sequence packing of the pretraining batches: the packed loss and gradients are the padded batch's."""

import pytest
import torch

from featalign.organisms import preset_config
from featalign.organisms.model import new_model
from featalign.organisms.tasks import DOMAINS, sample_mixture
from featalign.organisms.tokenizer import build_tokenizer
from featalign.organisms.train import answer_loss, encode_supervised, pack_supervised


@pytest.fixture(scope="module")
def batch():
    tok = build_tokenizer()
    return tok, sample_mixture(list(DOMAINS), 40, "train", seed=3)


def test_packing_keeps_every_problem_with_restarted_positions(batch):
    tok, problems = batch
    ids_pad, mask_pad = encode_supervised(problems, tok)
    ids, mask, pos = pack_supervised(problems, tok)
    assert ids.shape[1] == ids_pad.shape[1] and ids.shape[0] < len(problems)  # rows hold several problems
    # cut the rows back into problems at every position restart, drop the trailing pads, and compare with
    # the padded batch's rows (as multisets: packing reorders them)
    pieces = []
    for r in range(ids.shape[0]):
        starts = [j for j in range(ids.shape[1]) if pos[r, j] == 0] + [ids.shape[1]]
        for a, b in zip(starts, starts[1:]):
            if ids[r, a] != tok.pad_token_id:
                assert pos[r, a:b].tolist() == list(range(b - a))
                pieces.append((tuple(ids[r, a:b].tolist()), tuple(mask[r, a:b].tolist())))
    want = []
    for i in range(len(problems)):
        n = int((ids_pad[i] != tok.pad_token_id).sum())
        want.append((tuple(ids_pad[i, :n].tolist()), tuple(mask_pad[i, :n].tolist())))
    assert sorted(pieces) == sorted(want)


def test_packed_loss_and_gradients_equal_the_padded_ones(batch):
    tok, problems = batch
    model = new_model(preset_config("tiny"), tok)
    model.train()

    def loss_and_grads(*inputs):
        model.zero_grad(set_to_none=True)
        loss = answer_loss(model, *inputs)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref_grads = loss_and_grads(*encode_supervised(problems, tok))
    ids, mask, pos = pack_supervised(problems, tok)
    loss, grads = loss_and_grads(ids, mask, pos)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    # without the position ids the rows would attend across problems: a different loss, so the test can fail
    wrong, _ = loss_and_grads(ids, mask)
    assert abs(float(wrong) - float(ref_loss)) > 100 * 1e-6
