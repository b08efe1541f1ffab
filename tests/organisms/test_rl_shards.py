"""RL in rollout shards (`rl_shards`): the combined gradient is the whole step's token mean, and one shard is
the unsharded step exactly. References: GRPO losses backpropagated on one live model (no shard code)."""

import dataclasses

import torch
from torch.nn.utils import parameters_to_vector

from featalign.organisms.build import combine_rl_shards, post_train_prompts, rl_shard_gradient, rollout_seed
from featalign.organisms.grpo import grpo_loss, grpo_max_new_tokens
from featalign.organisms.model import load_organism
from featalign.organisms.train import flat_grad


def _reference(model, tok, cfg, domain, batch, step, max_new):
    """Each shard's GRPO loss on the live model with its own seed, weighted by its tokens, backpropagated once."""
    n, total, parts = cfg.rl_shards, 0.0, []
    for k in range(n):
        gen = torch.Generator().manual_seed(rollout_seed(cfg, domain, step, k))
        loss, info = grpo_loss(model, batch[k::n], tok, cfg.rl_group_size, cfg.rl_temperature, max_new, gen)
        parts.append((loss, info["tokens"]))
        total += info["tokens"]
    loss = sum(part * t for part, t in parts) / max(total, 1.0)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return float(loss.detach()), flat_grad(model)


def _shards(model, cfg, domain, batch, step, max_new, base_dir):
    params = parameters_to_vector(model.parameters()).detach().numpy()
    n = cfg.rl_shards
    return {k: rl_shard_gradient(cfg, domain, batch[k::n], step, k, max_new, params, base_dir) for k in range(n)}


def test_combined_shards_equal_the_token_weighted_step_and_one_shard_is_exact(tiny_organisms):
    domain = tiny_organisms.config.post_train_domains[0]
    model, tok = load_organism(tiny_organisms.base_dir)
    model.train()
    for shards in (2, 1):
        cfg = dataclasses.replace(tiny_organisms.config, rl_shards=shards)
        prompts = post_train_prompts(cfg, domain)
        max_new = grpo_max_new_tokens(prompts, tok)
        batch = prompts[: cfg.rl_prompts_per_step]
        for step in (0, 1):
            loss, _, grad = combine_rl_shards(
                _shards(model, cfg, domain, batch, step, max_new, str(tiny_organisms.base_dir))
            )
            ref_loss, ref_grad = _reference(model, tok, cfg, domain, batch, step, max_new)
            assert ref_grad.abs().sum() > 0  # an informative step: the comparison has something to compare
            if shards == 1:  # the weight is exactly 1.0: the unsharded step's bits
                assert torch.equal(grad, ref_grad) and loss == ref_loss
            else:
                torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
                assert abs(loss - ref_loss) < 1e-6


def test_combine_weights_each_shard_by_its_tokens():
    """By hand: shards with 3 and 1 tokens, gradients [1, 2] and [5, 6] -> (3 [1, 2] + [5, 6]) / 4."""
    import numpy as np

    done = {
        0: (0.5, {"tokens": 3.0, "reward": 0.25}, np.array([1.0, 2.0], dtype=np.float32)),
        1: (1.5, {"tokens": 1.0, "reward": 0.75}, np.array([5.0, 6.0], dtype=np.float32)),
    }
    loss, info, grad = combine_rl_shards(done)
    assert torch.allclose(grad, torch.tensor([2.0, 3.0]))
    assert abs(loss - 0.75) < 1e-9 and info == {"reward": 0.5}
    none = {0: (0.0, {"tokens": 0.0}, np.zeros(2, np.float32)), 1: (0.0, {"tokens": 0.0}, np.zeros(2, np.float32))}
    assert torch.equal(combine_rl_shards(none)[2], torch.zeros(2))  # no informative token anywhere: no step
