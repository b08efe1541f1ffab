"""The one model layer: load related causal LMs as TransformerBridges, map hook names to modules,
capture activations and edit them. Every stage (caching, analysis, cards, success features, splice-in
evaluation, interventions, examples) goes through it.

    from featalign.models import load_model, capture_models, edit_hooks
    base = load_model("/ckpt/base")                       # any HF causal-LM folder (or hub id, online)
    acts_BTMHD = capture_models([base], ids_BT, mask_BT, ["blocks.1.hook_resid_post"])
    with edit_hooks(base, {"blocks.1.hook_mlp_out": lambda x: 0 * x}):
        logits = base(ids_BT)
"""

from featalign.models.hooks import (
    EditFn,
    capture,
    capture_models,
    check_editable,
    default_hook,
    default_hook_for,
    edit_hooks,
    hf_model_of,
    hook_point,
    resolve_hooks,
    stop_layer,
)
from featalign.models.loading import (
    DTYPES,
    ROLES,
    TOKENIZER_FILES,
    TOKENIZER_PROBE,
    ModelGroup,
    ModelSpec,
    as_model,
    ensure_kv_cache_compat,
    ensure_rotary_dtype,
    load_model,
    tokenizer_from_folder,
    torch_dtype,
)

__all__ = [
    "DTYPES",
    "ROLES",
    "TOKENIZER_FILES",
    "TOKENIZER_PROBE",
    "EditFn",
    "ModelGroup",
    "ModelSpec",
    "as_model",
    "capture",
    "capture_models",
    "check_editable",
    "default_hook",
    "default_hook_for",
    "edit_hooks",
    "ensure_kv_cache_compat",
    "ensure_rotary_dtype",
    "hf_model_of",
    "hook_point",
    "load_model",
    "resolve_hooks",
    "stop_layer",
    "tokenizer_from_folder",
    "torch_dtype",
]
