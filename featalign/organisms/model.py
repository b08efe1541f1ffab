"""Organism models: tiny Llama causal LMs saved exactly like real Hugging Face checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from featalign.io import atomic_dir, provenance
from featalign.organisms.config import OrganismConfig
from featalign.organisms.tokenizer import build_tokenizer, load_tokenizer

META_FILE = "featalign.json"


def new_model(cfg: OrganismConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised (seeded) Llama model of the config's size; Llama rather than Qwen2 so that
    `AutoTokenizer` keeps the saved char-level tokenizer (in a `qwen2` folder it rebuilds a BPE tokenizer
    that drops spaces: docs/organisms.md, "Tokenizer")."""
    torch.manual_seed(cfg.seed)
    hf_cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_len,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.05,
    )
    return LlamaForCausalLM(hf_cfg)


def save_organism(model: LlamaForCausalLM, directory: str | Path, meta: dict[str, Any], tokenizer=None) -> Path:
    """Write an HF model folder (weights, config, tokenizer, featalign.json) atomically."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(str(tmp))
        (tokenizer or build_tokenizer()).save_pretrained(str(tmp))
        (tmp / META_FILE).write_text(json.dumps({**meta, **provenance(), "complete": True}, indent=2))
    return directory


def is_complete(directory: str | Path) -> bool:
    """Whether a model folder was fully written (its `featalign.json` says `complete`); anything else is rebuilt."""
    p = Path(directory) / META_FILE
    if not p.exists():
        return False
    try:
        return bool(json.loads(p.read_text()).get("complete"))
    except json.JSONDecodeError:
        return False


def load_organism(directory: str | Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """(model, tokenizer) of a complete organism folder, the tokenizer loaded explicitly; an incomplete
    folder is refused with the command that rebuilds it."""
    directory = Path(directory)
    if not is_complete(directory):
        raise FileNotFoundError(
            f"{directory} is not a complete organism folder (no {META_FILE} marked complete); "
            "rebuild it with `python -m featalign.organisms build`"
        )
    model = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    model.eval()
    return model, load_tokenizer(directory)
