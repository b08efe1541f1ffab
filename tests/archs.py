"""Tiny random Hugging Face models of several architectures, saved with a char-level tokenizer.

The hub is unreachable here, so every architecture test builds its model from a config; sizes are
the smallest each architecture accepts, so a forward pass takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = [chr(c) for c in range(32, 127)] + ["<bos>", "<eos>", "<pad>", "<unk>"]

_COMMON = dict(vocab_size=len(VOCAB), max_position_embeddings=128)
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)

ARCH_CONFIGS = {
    "llama": ("LlamaConfig", {**_DECODER, "num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", {**_DECODER, "num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", {**_DECODER, "num_key_value_heads": 2, "head_dim": 8}),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128}),
    "gpt_neox": ("GPTNeoXConfig", {**_DECODER}),
    "gemma3": ("Gemma3TextConfig", {**_DECODER, "num_key_value_heads": 2, "head_dim": 8}),
    "opt": ("OPTConfig", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "word_embed_proj_dim": 32}),
    "olmo2": ("Olmo2Config", {**_DECODER, "num_key_value_heads": 2}),  # post-norm, q/k norms, float32 RoPE
}


def save_char_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    ).save_pretrained(out)


def tiny_random_model(arch: str, out: Path, seed: int = 0) -> Path:
    """Save a random `arch` causal LM plus tokenizer into `out` and return `out`."""
    import transformers

    cls_name, kw = ARCH_CONFIGS[arch]
    cfg = getattr(transformers, cls_name)(**_COMMON, **kw)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = len(VOCAB) - 4, len(VOCAB) - 3, len(VOCAB) - 2
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_char_tokenizer(out)
    return out


def perturbed_copy(base_dir, out, scale: float, seed: int):
    """`base_dir`'s model with Gaussian noise (scale x each tensor's std) added to every weight: a 'tuned' model.
    The tokenizer files are copied, not re-saved through AutoTokenizer (which may rebuild a char-level tokenizer
    in a qwen2 folder as Qwen2's BPE: the qwen2 tokenizer trap of docs/real_models.md)."""
    import shutil

    from transformers import AutoModelForCausalLM

    base_dir, out = Path(base_dir), Path(out)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.std().nan_to_num() * torch.randn(p.shape, generator=g))
    model.save_pretrained(out)
    for f in base_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out
