"""Residual-stream hooks on Hugging Face causal LMs: capture activations and splice in reconstructions.

Hook names follow TransformerLens (`blocks.{L}.hook_resid_post`, `blocks.{L}.hook_resid_pre`), so a
crosscoder trained on a TransformerBridge store can be evaluated on the plain HF model.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def _layers(model: nn.Module) -> nn.ModuleList:
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}; supported: Llama/Qwen2/GPT-2/NeoX")


def parse_hook(hook: str) -> tuple[int, str]:
    m = _HOOK_RE.match(hook)
    if not m:
        raise ValueError(f"unsupported hook {hook!r}: use blocks.<layer>.hook_resid_post or blocks.<layer>.hook_resid_pre")
    return int(m.group(1)), m.group(2)


@contextmanager
def residual_hook(model: nn.Module, hook: str, fn: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """Call `fn(resid_BTD)` at `hook`; if it returns a tensor, that replaces the residual stream."""
    layer, where = parse_hook(hook)
    layers = _layers(model)
    if layer >= len(layers):
        raise ValueError(f"{hook}: the model has only {len(layers)} layers")
    mod = layers[layer]
    if where == "post":
        def post(_m, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            new = fn(h)
            if new is None:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new
        handle = mod.register_forward_hook(post)
    else:
        def pre(_m, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            new = fn(h)
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}
        handle = mod.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def load_hf(model_dir: str | Path):
    """(model, tokenizer) from an organism folder or any local HF causal-LM folder."""
    from featalign.organisms.model import META_FILE, load_organism

    if (Path(model_dir) / META_FILE).exists():
        return load_organism(model_dir)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir))


def task_tokens(tokenizer, n_seqs: int, split: str = "eval", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Organism task text (`<bos> prompt answer <eos>`, every domain) -> ids [S, T] and a token mask.

    The mask is 1 on real tokens except `<bos>` (its activation is an outlier that crosscoders skip).
    """
    from featalign.organisms.tasks import DOMAINS, sample_mixture
    from featalign.organisms.train import encode_supervised

    ids, _ = encode_supervised(sample_mixture(list(DOMAINS), n_seqs, split, seed), tokenizer)
    mask = ids != tokenizer.pad_token_id
    mask[:, 0] = False
    return ids, mask


def task_tokens_with_targets(tokenizer, n_seqs: int, split: str = "eval", seed: int = 0):
    """As `task_tokens`, plus the answer-target mask of `encode_supervised`."""
    from featalign.organisms.tasks import DOMAINS, sample_mixture
    from featalign.organisms.train import encode_supervised

    ids, target = encode_supervised(sample_mixture(list(DOMAINS), n_seqs, split, seed), tokenizer)
    mask = ids != tokenizer.pad_token_id
    mask[:, 0] = False
    return ids, mask, target


@torch.no_grad()
def capture(models: list[nn.Module], hooks: tuple[str, ...], ids_ST: Tensor, batch: int = 256) -> Tensor:
    """Activations of every model at every hook on the same tokens -> [S, T, M, H, D]."""
    out_per_model = []
    for model in models:
        chunks = []
        for i in range(0, ids_ST.shape[0], batch):
            got: dict[str, Tensor] = {}
            with contextlib_stack([residual_hook(model, h, lambda r, h=h: got.__setitem__(h, r.detach().float())) for h in hooks]):
                model(input_ids=ids_ST[i : i + batch])
            chunks.append(torch.stack([got[h] for h in hooks], dim=2))  # [s, T, H, D]
        out_per_model.append(torch.cat(chunks))
    return torch.stack(out_per_model, dim=2)


@contextmanager
def contextlib_stack(cms):
    from contextlib import ExitStack

    with ExitStack() as stack:
        for cm in cms:
            stack.enter_context(cm)
        yield


def collect_activations(
    model_dirs: dict[str, str | Path], hooks: tuple[str, ...], n_tokens: int, seed: int = 0,
    split: str = "train", progress: bool = True,
) -> Tensor:
    """In-process activation collection on organism task text -> `[N, M, H, D]` (pad and `<bos>` dropped)."""
    from tqdm.auto import tqdm

    loaded = [load_hf(d) for d in model_dirs.values()]
    tok = loaded[0][1]
    per_seq = 24  # rough tokens per task sequence; we draw more sequences until n_tokens is reached
    xs, have, round_ = [], 0, 0
    pbar = tqdm(total=n_tokens, desc="caching activations", disable=not progress)
    while have < n_tokens:
        ids, mask = task_tokens(tok, max(64, (n_tokens - have) // per_seq + 64), split, seed * 1000 + round_)
        acts = capture([m for m, _ in loaded], hooks, ids)
        x = acts[mask]
        xs.append(x)
        have += x.shape[0]
        round_ += 1
        pbar.update(x.shape[0])
    pbar.close()
    return torch.cat(xs)[:n_tokens].contiguous()


def _answer_loss(model: nn.Module, ids_ST: Tensor, target_mask_ST: Tensor) -> Tensor:
    """Mean next-token loss on answer (+ <eos>) targets: the loss the organisms are trained on.

    Prompt tokens (random operands) are unpredictable by construction, so they are left out.
    """
    logits = model(input_ids=ids_ST).logits[:, :-1].float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids_ST[:, 1:].reshape(-1), reduction="none")
    m = target_mask_ST[:, 1:].reshape(-1).float()
    return (nll * m).sum() / m.sum().clamp_min(1)


@torch.no_grad()
def splice_in_loss(crosscoder, model_dirs: dict[str, str | Path], n_seqs: int = 256, seed: int = 0) -> dict[str, dict]:
    """Answer-token loss of each model with its hook activations replaced by the crosscoder's reconstruction.

    Returns per model: clean, spliced, zero-ablated loss, and `loss_recovered` =
    (zero - spliced) / (zero - clean) (1 = perfect reconstruction, 0 = as bad as zeroing).
    Reconstructions come from all models' clean activations (the encoder is shared), positions
    outside the token mask (pad, `<bos>`) keep their clean value.
    """
    cfg = crosscoder.cfg
    if tuple(model_dirs) != tuple(cfg.models):
        raise ValueError(f"model_dirs names {tuple(model_dirs)} must match the crosscoder's models {cfg.models}")
    loaded = [load_hf(d) for d in model_dirs.values()]
    tok = loaded[0][1]
    ids, mask, target = task_tokens_with_targets(tok, n_seqs, "eval", seed)
    acts = capture([m for m, _ in loaded], cfg.hooks, ids)  # [S, T, M, H, D]
    x_hat = crosscoder(acts[mask])  # [N, M, H, D]
    out = {}
    for mi, (name, (model, _)) in enumerate(zip(cfg.models, loaded)):
        def run(replacement: Tensor | None) -> float:
            def make(hi):
                def fn(resid):
                    if replacement is None:
                        return None
                    resid = resid.clone()
                    resid[mask] = replacement[:, hi].to(resid.dtype)
                    return resid
                return fn
            with contextlib_stack([residual_hook(model, h, make(hi)) for hi, h in enumerate(cfg.hooks)]):
                return _answer_loss(model, ids, target).item()
        clean = run(None)
        spliced = run(x_hat[:, mi])
        zero = run(torch.zeros_like(x_hat[:, mi]))
        out[name] = {"clean": clean, "spliced": spliced, "zero": zero,
                     "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan")}
    return out
