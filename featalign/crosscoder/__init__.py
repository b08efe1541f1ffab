"""N-model crosscoder: shared encoder, one decoder per (model, hook); the sparsity mechanism is a
plug-in variant (`featalign.crosscoder.variants`: l1, batchtopk, jumprelu, ...).

    from featalign.crosscoder import Crosscoder, CrosscoderConfig, TrainerConfig, InMemoryActivations, train_crosscoder
    cfg = CrosscoderConfig(models=("base", "rl"), variant="batchtopk", variant_cfg={"k": 32}, ...)
    cc = train_crosscoder(cfg, TrainerConfig(...), source, "runs/cc")    # out_dir=None: in memory
    cc = Crosscoder.load("runs/cc")
    f_BL = cc.encode(x_BMHD)                  # joint encoding of paired tokens
    f_rl_BL = cc.encode_as(x_BHD, "rl")       # model rl's latents from its activations alone
    x_hat_BMHD = cc.decode(f_BL)
"""

from featalign.crosscoder.config import FORMAT_VERSION, CrosscoderConfig, TrainerConfig
from featalign.crosscoder.data import ActivationSource, InMemoryActivations, PlantedTruth, planted_data
from featalign.crosscoder.evaluate import evaluate
from featalign.crosscoder.model import Crosscoder
from featalign.crosscoder.train import NaNLossError, StepCallback, Trainer, train_crosscoder
from featalign.crosscoder.variants import REGISTRY as VARIANTS
from featalign.crosscoder.variants import TrainOutput, Variant, VariantConfig, register

__all__ = [
    "FORMAT_VERSION",
    "ActivationSource",
    "Crosscoder",
    "CrosscoderConfig",
    "NaNLossError",
    "PlantedTruth",
    "InMemoryActivations",
    "StepCallback",
    "TrainOutput",
    "Trainer",
    "TrainerConfig",
    "VARIANTS",
    "Variant",
    "VariantConfig",
    "evaluate",
    "planted_data",
    "register",
    "train_crosscoder",
]
