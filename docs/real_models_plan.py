"""What the real-models recipe (docs/real_models.md §6) needs on a GPU: memory from exact sizes, time from FLOP
and byte counts at stated throughputs. Nothing here is a GPU measurement; the numbers are the planning
arithmetic, written to docs/data/real_models_plan.json and rendered into the page by docs/render_tables.py.

    python docs/real_models_plan.py        # rewrite docs/data/real_models_plan.json

The model's parameter count is exact: the architecture is built from its config on the `meta` device (no
weights, no download). The config values are Qwen2.5-Math-1.5B's published `config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent
OUT = DOCS / "data" / "real_models_plan.json"

QWEN25_MATH_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096,
                       tie_word_embeddings=True)

# The recipe's settings (the defaults of its variables).
RECIPE = dict(n_models=3, n_checkpoints_per_series=5, hook_layer=13, cache_tokens=20_000_000,
              analyze_tokens=500_000, n_latents=24_576, k=100, batch=4096, steps=20_000, store_bytes=2,
              n_problems=1000, prompt_tokens=200, max_new_tokens=512, generation_batch=64, n_controls=20)

# Stated, not measured: one H200 (dense bf16 989 TFLOP/s, HBM 4.8 TB/s) at these utilisations.
# A decoding step of a 28-block HF model in eager mode launches hundreds of small kernels: at small batches it
# is bound by that launch overhead (taken as 20 ms a step) rather than by reading the weights.
GPU = dict(name="H200", bf16_tflops=989.0, hbm_tb_s=4.8, gemm_utilisation=0.4, decode_bandwidth_utilisation=0.5,
           decode_step_overhead_ms=20.0)


def count_parameters(config: dict) -> tuple[int, int]:
    """(all parameters, parameters of one decoder block) of the architecture, built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**config))
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    return total, block


def plan(config: dict = QWEN25_MATH_15B, r: dict = RECIPE, gpu: dict = GPU) -> dict:
    total, block = count_parameters(config)
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    gib = 2**30
    gemm_flops_s = gpu["bf16_tflops"] * 1e12 * gpu["gemm_utilisation"]
    n_series = 2 * r["n_checkpoints_per_series"]
    # caching runs each model only through the hooked block (stop_at_layer): 2 FLOPs per weight per token
    cache_flops = 2 * block * (r["hook_layer"] + 1) * r["cache_tokens"] * r["n_models"]
    K = r["n_models"] * d
    # a dense step is 5 GEMMs of 2*B*K*L FLOPs (encode, decode, three backward products); BatchTopK's sparse
    # decode is cheaper, so this bounds it from above
    cc_flops = 5 * 2 * r["batch"] * K * r["n_latents"] * r["steps"]
    cc_params = 2 * K * r["n_latents"] + r["n_latents"] + K
    # greedy decoding is bound by reading the weights once per step for the whole batch
    steps_per_model = r["n_problems"] / r["generation_batch"] * r["max_new_tokens"]
    step_s = max(2 * total / (gpu["hbm_tb_s"] * 1e12 * gpu["decode_bandwidth_utilisation"]),
                 gpu["decode_step_overhead_ms"] / 1e3)
    decode_s_per_model = steps_per_model * step_s
    kv_bytes = (2 * layers * config["num_key_value_heads"] * (d // config["num_attention_heads"]) * 2
                * r["generation_batch"] * (r["prompt_tokens"] + r["max_new_tokens"]))
    scored_runs = 2 + (1 + r["n_controls"]) * 2  # base and rl once; ablate-in-rl and steer-base with controls
    return {
        "measured": False, "model": "Qwen2.5-Math-1.5B", "config": config, "recipe": r, "gpu": gpu,
        "parameters": total, "block_parameters": block,
        "memory_gib": {
            "one_model_bf16": 2 * total / gib,
            "cache_all_main_models_bf16": 2 * total * r["n_models"] / gib,
            "analyze_base_and_series_bf16": 2 * total * (1 + n_series) / gib,
            "kv_cache_generation": kv_bytes / gib,
            "store_on_disk": r["cache_tokens"] * r["n_models"] * d * r["store_bytes"] / gib,
            "analyze_activations_ram_f32": r["analyze_tokens"] * (1 + n_series) * d * 4 / gib,
            "crosscoder_train_f32_adam_grads": 4 * 4 * cc_params / gib,
            "crosscoder_batch_preacts": 4 * r["batch"] * r["n_latents"] / gib,
        },
        "time_minutes": {
            "cache": cache_flops / gemm_flops_s / 60,
            "train_crosscoder_dense_bound": cc_flops / gemm_flops_s / 60,
            "score_one_model": decode_s_per_model / 60,
            "score_interventions": scored_runs * decode_s_per_model / 60,
        },
        "crosscoder_parameters": cc_params,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(plan(), indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
