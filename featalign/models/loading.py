"""Load related causal LMs as TransformerBridges and group them so their activations line up.

Alignment compares the models token by token, so a group insists on one tokenizer and one width
per hook point; both are checked up front with errors that say what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from featalign.config import JsonConfig
from featalign.models.hooks import capture, hf_model_of, resolve_hooks

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ROLES = ("base", "rl", "sft", "checkpoint", "other")
#: a module type kept through the `ensure_*` patches, which return the model they are given
_ModuleT = TypeVar("_ModuleT", bound=torch.nn.Module)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec(JsonConfig):
    """One model of a group: `name` labels it in stores and plots; `path` is a local dir or hub id."""

    name: str
    path: str
    role: str = "other"  # base | rl | sft | checkpoint | other
    step: int | None = None  # checkpoint step / index, when the model is one of a series
    revision: str | None = None  # hub revision (branch, tag or commit) of a hub id

    def __post_init__(self) -> None:
        self.path = str(self.path)
        if self.role not in ROLES:
            raise ValueError(f"ModelSpec {self.name!r}: role must be one of {ROLES}, got {self.role!r}")


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name (float32 | bfloat16 | float16) or a dtype; anything else is refused with the valid
    names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
#: Spaces, digits, punctuation and words: a tokenizer rebuilt wrongly (the qwen2 tokenizer trap, docs/real_models.md)
#: differs here.
TOKENIZER_PROBE = "The quick brown fox: max 3 9 4 = 9, 12+34=46; sort 9313=1339."


def _explicit_tokenizer(path: Path):
    """Organism folders carry a char-level tokenizer that AutoTokenizer may rebuild wrongly
    for some architectures (the qwen2 tokenizer trap, docs/real_models.md), so load it explicitly."""
    if (path / "featalign.json").exists() and (path / "tokenizer.json").exists():
        return tokenizer_from_folder(path)
    return None


def tokenizer_from_folder(path: str | Path, add_bos_token: bool = False):
    """The tokenizer saved in `path` exactly as saved: its `tokenizer.json` through `PreTrainedTokenizerFast`
    (AutoTokenizer may rebuild it as the architecture's class: the qwen2 tokenizer trap, docs/real_models.md), else
    `AutoTokenizer`.
    `add_bos_token=True` is the form TransformerLens keeps instead of reloading it through AutoTokenizer."""
    path = Path(path)
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save one there with tokenizer.save_pretrained(folder)"
        )
    kw: dict[str, Any] = {"add_bos_token": True} if add_bos_token else {}
    if (path / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(str(path), **kw)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), **kw)
    return tok


def _tokenizes_like(tok, reference) -> bool:
    """Same ids for the probe (special tokens aside) and the same BOS/EOS/pad ids."""
    ids = lambda t: t(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]  # noqa: E731
    return ids(tok) == ids(reference) and all(
        getattr(tok, a) == getattr(reference, a) for a in ("bos_token_id", "eos_token_id")
    )


def _kept_by_transformer_lens(tok, model: str):
    """`tok` in the form TransformerLens keeps (its `get_tokenizer_with_bos` reloads any other through
    AutoTokenizer): loaded from its folder with add_bos_token=True."""
    src = getattr(tok, "name_or_path", "") or ""
    if not src or not Path(src).is_dir():
        raise ValueError(
            f"model {model}: TransformerLens replaced the tokenizer passed to load_model by an AutoTokenizer that "
            "tokenizes differently, and this tokenizer was never saved to a folder, so it cannot be kept: save it "
            "(tok.save_pretrained(dir)) and pass tokenizer_from_folder(dir) (CLI: --tokenizer dir)"
        )
    return tokenizer_from_folder(src, add_bos_token=True)


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    compatibility_mode: bool = False,
    tokenizer=None,
    revision: str | None = None,
) -> TransformerBridge:
    """Load a local HF folder (or a hub id, where online) as a `TransformerBridge` in eval mode.

    The bridge's tokenizer is checked against the reference one (`tokenizer` if given, else the folder's
    own `tokenizer.json`) on a probe string: TransformerLens may swap in an AutoTokenizer that tokenizes
    differently (the qwen2 tokenizer trap, docs/real_models.md: a char-level tokenizer in a `qwen2` folder loses its
    spaces),
    in which case the reference is passed again in the form TransformerLens keeps; if even that fails the
    load is refused, so activations are never cached with wrong tokens. A local folder without a
    tokenizer (and no `tokenizer` given) is refused naming the folder."""
    from transformer_lens.model_bridge import TransformerBridge

    local = Path(path).expanduser()
    reference = tokenizer
    if local.exists():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"{local} has no config.json: point at a Hugging Face model folder")
        if tokenizer is None and not any((local / f).exists() for f in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"model folder {local} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save the tokenizer "
                f"into it (tokenizer.save_pretrained('{local}')), or pass one (load_model(path, tokenizer=...); "
                "CLI: --tokenizer DIR)"
            )
        tokenizer = tokenizer or _explicit_tokenizer(local)
        if reference is None and (local / "tokenizer.json").exists():
            reference = tokenizer or tokenizer_from_folder(local)
        name = str(local)
    else:
        name = str(path)

    def boot(tok):
        try:
            return TransformerBridge.boot_transformers(
                name, device=device, dtype=torch_dtype(dtype), tokenizer=tok, revision=revision
            )
        except KeyError as e:  # TransformerLens reloads a tokenizer by its folder name, which an unsaved one lacks
            if tok is None or "name_or_path" not in str(e):
                raise
            return boot(_kept_by_transformer_lens(tok, name))  # refuses a tokenizer with no folder, naming the fix
        except OSError as e:
            raise OSError(
                f"could not load model {name!r}: not a local folder and the hub is unreachable or has no such id "
                f"({e}). Pass a local Hugging Face folder."
            ) from e

    bridge = boot(tokenizer)
    if reference is not None and not _tokenizes_like(bridge.tokenizer, reference):
        bridge = boot(_kept_by_transformer_lens(reference, name))
        if not _tokenizes_like(bridge.tokenizer, reference):
            raise ValueError(
                f"model {name}: the bridge's tokenizer ({type(bridge.tokenizer).__name__}) tokenizes "
                f"{TOKENIZER_PROBE!r} differently from the folder's own tokenizer even when it is passed "
                "explicitly; pass the right one with --tokenizer DIR / load_model(path, tokenizer=...)"
            )
    if compatibility_mode:
        bridge.enable_compatibility_mode()
    bridge.eval()
    return ensure_rotary_dtype(ensure_kv_cache_compat(bridge))


def as_model(model: str | Path | TransformerBridge, **load_kw) -> TransformerBridge:
    """A loaded bridge as it is; a folder or hub id through `load_model` (so stages take either)."""
    if hasattr(model, "hook_dict"):
        return model  # type: ignore[return-value]
    return load_model(model, **load_kw)


_KV_COMPAT_FLAG = "_featalign_kv_cache_compat"


def _cache_kwarg_to_past_key_values(_module, args, kwargs):
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        return args, {**kwargs, "past_key_values": kwargs["cache"]}
    return None


def _drop_duplicate_past_key_values(_module, args, kwargs):
    """The bridge passes its kwargs on to the HF attention; attentions that take both names (OPT) warn when
    both are set, so the copy added for the bridge is removed again before the HF module sees it."""
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is kwargs["cache"]:
        return args, {k: v for k, v in kwargs.items() if k != "past_key_values"}
    return None


def ensure_kv_cache_compat(model: _ModuleT) -> _ModuleT:
    """Make a TransformerBridge's attention see the KV cache under every transformers version.

    transformers 5.24 renamed the cache argument that decoder layers pass to attention from
    `past_key_values` to `cache`; TransformerLens 3.9's attention bridges read only
    `past_key_values` (or `layer_past`), so on 5.24 they never update the cache and each decoding
    step attends to itself alone: a full forward is still exact, incremental decoding is silently
    wrong. A forward pre-hook on each attention bridge hands the cache over under the old name.
    Idempotent; a model that is not a bridge (or has no attention bridges) is returned unchanged.
    """
    lm = hf_model_of(model)  # the hooks live on the HF model the bridge wraps
    if getattr(lm, _KV_COMPAT_FLAG, False):
        return model
    try:
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    except ImportError:  # a TransformerLens without the bridge: nothing to patch
        return model
    for module in lm.modules():
        if isinstance(module, AttentionBridge):
            module.register_forward_pre_hook(_cache_kwarg_to_past_key_values, with_kwargs=True)
            inner = getattr(module, "original_component", None)
            if isinstance(inner, torch.nn.Module):
                inner.register_forward_pre_hook(_drop_duplicate_past_key_values, with_kwargs=True)
    setattr(lm, _KV_COMPAT_FLAG, True)
    return model


_ROTARY_DTYPE_FLAG = "_featalign_rotary_dtype"


def _weight_dtype(attn: torch.nn.Module) -> torch.dtype | None:
    """The dtype the attention computes in: that of its first floating-point HF weight, read at call time so a
    later `model.to(dtype)` is followed; None where every weight is quantized (integer storage is no target)."""
    inner = getattr(attn, "original_component", None)
    if isinstance(inner, torch.nn.Module):
        for p in inner.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def _cast_output_to(attn: torch.nn.Module) -> Callable[..., torch.Tensor | None]:
    """Forward hook for hook_rot_q / hook_rot_k: the rotated q or k back in the attention's dtype."""

    def hook(_module: torch.nn.Module, _args: tuple, out: Any) -> torch.Tensor | None:
        dtype = _weight_dtype(attn)
        if dtype is not None and isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != dtype:
            return out.to(dtype)
        return None

    return hook


def _cast_position_embeddings(attn: torch.nn.Module) -> Callable[..., tuple[tuple, dict] | None]:
    """Forward pre-hook fallback where the bridge has no hook_rot_q/k: (cos, sin) in the attention's dtype,
    as Llama's rotary embedding returns them (RoPE then runs in that dtype)."""

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        pe, dtype = kwargs.get("position_embeddings"), _weight_dtype(attn)
        if dtype is None or not isinstance(pe, tuple) or not all(isinstance(t, torch.Tensor) for t in pe):
            return None
        if all(t.dtype == dtype for t in pe):
            return None
        return args, {**kwargs, "position_embeddings": tuple(t.to(dtype) for t in pe)}

    return hook


def ensure_rotary_dtype(model: _ModuleT) -> _ModuleT:
    """Make a TransformerBridge of a bf16/fp16 model whose rotary embedding returns float32 cos/sin run.

    OLMo, OLMo 2, OLMo 3 and FlexOlmo compute RoPE in float32 on purpose: their rotary embedding returns
    float32 cos/sin and their own `apply_rotary_pos_emb` casts the rotated q/k back to the input dtype.
    TransformerLens 3.9's `PositionEmbeddingsAttentionBridge.forward` reimplements attention with Llama's
    `apply_rotary_pos_emb`, which does not cast back, so q/k (and the softmax weights cast to q's dtype)
    become float32 while v stays bf16/fp16, and `attn_weights @ v` fails ("expected m1 and m2 to have the
    same dtype"). A forward hook on each such bridge's hook_rot_q / hook_rot_k casts the rotated q/k back to
    the attention's weight dtype: exactly the model's own cast, so activations match the HF forward, and
    hooks added later on hook_rot_q/k see the cast tensor. A no-op where dtypes already agree (float32
    models, Llama-style rotaries). Idempotent; a model that is not a bridge is returned unchanged.
    """
    lm = hf_model_of(model)
    if getattr(lm, _ROTARY_DTYPE_FLAG, False):
        return model
    try:
        from transformer_lens.model_bridge.generalized_components import PositionEmbeddingsAttentionBridge
    except ImportError:  # a TransformerLens without the bridge: nothing to patch
        return model
    for module in lm.modules():
        if not isinstance(module, PositionEmbeddingsAttentionBridge):
            continue
        rot = [getattr(module, n, None) for n in ("hook_rot_q", "hook_rot_k")]
        rot_hooks = [h for h in rot if isinstance(h, torch.nn.Module)]
        if len(rot_hooks) == len(rot):  # both are modules
            for h in rot_hooks:
                h.register_forward_hook(_cast_output_to(module))
        else:
            module.register_forward_pre_hook(_cast_position_embeddings(module), with_kwargs=True)
    setattr(lm, _ROTARY_DTYPE_FLAG, True)
    return model


def _tokenizer_fingerprint(tok) -> dict:
    """What must agree for two models to see identical token ids."""
    vocab = tok.get_vocab()
    probe = "The quick brown fox: 12+34=46"
    return {
        "vocab_size": len(vocab),
        "vocab_hash": hashlib.sha1(json.dumps(sorted(vocab.items())).encode()).hexdigest(),
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "pad": tok.pad_token_id,
        "probe": tok(probe)["input_ids"],
    }


@dataclass
class ModelGroup:
    """N related models on the same tokens: specs[i] describes models[i]."""

    specs: list[ModelSpec]
    models: list[TransformerBridge] = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.specs) != len(self.models) or not self.specs:
            raise ValueError("ModelGroup needs one spec per model and at least one model")
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.check_tokenizers()

    @classmethod
    def load(
        cls,
        specs: Sequence[ModelSpec],
        dtype: str = "float32",
        device: str = "cpu",
        compatibility_mode: bool = False,
        tokenizer=None,
    ) -> ModelGroup:
        """Load every spec's model; `tokenizer` (one for all, e.g. `tokenizer_from_folder(dir)`) overrides theirs."""
        specs = list(specs)
        return cls(
            specs,
            [load_model(s.path, dtype, device, compatibility_mode, tokenizer, revision=s.revision) for s in specs],
        )

    @classmethod
    def from_paths(cls, paths: dict[str, str | Path], **kw) -> ModelGroup:
        """{'base': dir, 'rl': dir, ...}: names that are roles get that role."""
        specs = [ModelSpec(n, str(p), role=n if n in ROLES else "other") for n, p in paths.items()]
        return cls.load(specs, **kw)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def tokenizer(self):
        return self.models[0].tokenizer

    def __len__(self) -> int:
        return len(self.models)

    def check_tokenizers(self) -> None:
        ref = _tokenizer_fingerprint(self.models[0].tokenizer)
        for spec, m in zip(self.specs[1:], self.models[1:]):
            fp = _tokenizer_fingerprint(m.tokenizer)
            bad = [k for k in ref if ref[k] != fp[k]]
            if bad:
                raise ValueError(
                    f"model {spec.name!r} ({spec.path}) has a different tokenizer from {self.specs[0].name!r} "
                    f"(differs in {bad}); every model of a group must share one tokenizer so rows align token by token"
                )

    def check_widths(self, hooks: Sequence[str]) -> dict[str, int]:
        """Width of each hook, checked equal across models with a one-token probe forward."""
        probe = torch.tensor([[self.tokenizer.bos_token_id or 0, *self.tokenizer("1")["input_ids"][-1:]]])
        widths: dict[str, dict[str, int]] = {}
        for spec, m in zip(self.specs, self.models):
            resolve_hooks(m, hooks)
            acts = capture(m, probe.to(m.cfg.device), torch.ones_like(probe).to(m.cfg.device), hooks)
            for h in hooks:
                widths.setdefault(h, {})[spec.name] = int(acts[h].shape[-1])
        for h, per_model in widths.items():
            if len(set(per_model.values())) > 1:
                raise ValueError(
                    f"hook {h!r} has different widths across models: {per_model}. A crosscoder needs one d per "
                    "hook; pick models from the same family, or hooks with matching d_model"
                )
        widths_set = {h: next(iter(v.values())) for h, v in widths.items()}
        if len(set(widths_set.values())) > 1:
            raise ValueError(
                f"hooks have different widths {widths_set}; a store row is [n_models, n_hooks, d] so all "
                "hooks must share d (cache them into separate stores)"
            )
        return widths_set
