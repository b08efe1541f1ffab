"""A compact GRPO (group-relative policy optimisation) step for the organisms.

One on-policy update per rollout batch (so the PPO ratio is 1 and clipping is inactive), reward
= the domain's exact verifier, advantages normalised within each prompt's group of G samples,
token-level loss averaged over the completion tokens of informative groups (DAPO), and an
optional k3 KL estimate to the frozen base (`beta`, default 0 as in TRL).
"""

from __future__ import annotations

import torch
from torch import Tensor

from featalign.generation import Generation, completion_texts, decode
from featalign.organisms.tasks import Problem, get_domain


def group_advantages(rewards_PG: Tensor, eps: float = 1e-4) -> Tensor:
    """(r - mean_group) / (std_group + eps); a group with equal rewards gets zero advantage."""
    mean = rewards_PG.mean(-1, keepdim=True)
    std = rewards_PG.std(-1, keepdim=True, unbiased=False)
    return (rewards_PG - mean) / (std + eps)


def completion_logprobs(model, gen: Generation) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of the sampled completion under `model`, and the completion mask."""
    ids = torch.cat([gen.prompt_ids_BP, gen.completion_ids_BC], 1)
    attn = torch.cat([gen.prompt_mask_BP, gen.completion_mask_BC], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    P = gen.prompt_ids_BP.shape[1]
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, P - 1 : -1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, gen.completion_ids_BC[..., None]).squeeze(-1)
    return logp, gen.completion_mask_BC.float()


def grpo_loss(
    model,
    problems: list[Problem],
    tokenizer,
    group_size: int,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator,
    ref_model=None,
    beta: float = 0.0,
) -> tuple[Tensor, dict]:
    """Sample `group_size` completions per problem, reward them with the domain's verifier, and return the
    GRPO loss (group-normalised advantages, token-level mean over informative groups, optional k3 KL
    to `ref_model`) and rollout statistics (`tokens`: the count the mean is over). Sampling uses
    `generator`, so a step is a pure function of its seed, which is what makes a resumed build bitwise
    identical."""
    prompts = [tokenizer(p.prompt)["input_ids"] for p in problems for _ in range(group_size)]
    model.eval()
    gen = decode(
        model,
        prompts,
        max_new_tokens,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        temperature=temperature,
        generator=generator,
    )
    model.train()
    texts = completion_texts(gen, tokenizer, tokenizer.eos_token_id)
    answers = [p for p in problems for _ in range(group_size)]
    ended = (gen.completion_ids_BC == tokenizer.eos_token_id).any(1)
    rewards = (
        torch.tensor([float(get_domain(p.domain).verify(t, p.answer)) for t, p in zip(texts, answers)]) * ended.float()
    )  # a completion that never ends is wrong
    adv = group_advantages(rewards.view(len(problems), group_size)).view(-1)
    logp, mask = completion_logprobs(model, gen)
    # ratio = exp(logp - logp.detach()) == 1 on-policy; its gradient is that of logp
    per_tok = -adv[:, None] * torch.exp(logp - logp.detach())
    kl = torch.zeros(())
    if ref_model is not None and beta > 0:
        with torch.no_grad():
            ref_logp, _ = completion_logprobs(ref_model, gen)
        d = ref_logp - logp
        kl_tok = torch.exp(d) - d - 1
        per_tok = per_tok + beta * kl_tok
        kl = (kl_tok * mask).sum() / mask.sum()
    # Normalise over the tokens of informative groups only (those with unequal rewards): DAPO's
    # dynamic sampling drops all-equal groups; dropping them from the mean keeps the step size
    # independent of how many groups happen to be informative.
    informative = (adv != 0).float()[:, None] * mask
    denom = informative.sum() if beta == 0 else mask.sum()
    loss = (per_tok * mask).sum() / denom.clamp(min=1)
    info = {
        "tokens": float(denom),  # what the loss is averaged over: shards of one step are weighted by it
        "reward": float(rewards.mean()),
        "kl": float(kl),
        "len": float(mask.sum(1).mean()),
        "informative": float((adv != 0).float().mean()),
    }
    return loss, info


def grpo_max_new_tokens(problems: list[Problem], tokenizer) -> int:
    """Generation budget for a batch: the longest reference answer plus room for `<eos>` and one wrong extra token."""
    longest = max(len(tokenizer(p.answer, add_special_tokens=False)["input_ids"]) for p in problems)
    return longest + 2  # room for <eos> and one wrong extra token
