"""N-model crosscoder: shared encoder, one decoder per (model, hook); L1 / BatchTopK / JumpReLU.

    from featalign.crosscoder import Crosscoder, CrosscoderConfig, TrainerConfig, InMemoryActivations, train_crosscoder
    cc = train_crosscoder(CrosscoderConfig(...), TrainerConfig(...), source, "runs/cc")
    cc = Crosscoder.load("runs/cc"); f_BL = cc.encode(x_BMHD); x_hat_BMHD = cc.decode(f_BL)
"""

from featalign.crosscoder.config import FORMAT_VERSION, CrosscoderConfig, TrainerConfig
from featalign.crosscoder.data import ActivationSource, PlantedTruth, InMemoryActivations, planted_data
from featalign.crosscoder.evaluate import evaluate
from featalign.crosscoder.model import Crosscoder
from featalign.crosscoder.train import NaNLossError, Trainer, train_crosscoder

__all__ = [
    "FORMAT_VERSION", "ActivationSource", "Crosscoder", "CrosscoderConfig", "NaNLossError", "PlantedTruth",
    "InMemoryActivations", "Trainer", "TrainerConfig", "evaluate", "planted_data", "train_crosscoder",
]
