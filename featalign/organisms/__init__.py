"""Model organisms: tiny base / RL / SFT models trained by featalign itself (the default of every CLI).

This package's top level holds the organisms' definitions (config, task domains), which the generic
layers (task sets, evaluation) read for the built-in default. Building them is
`featalign.organisms.build` (`build_organisms`, `ensure_organisms`, `Organisms`): it evaluates the
models it trains, so it sits above `featalign.evaluation` and is not imported here.
"""

from featalign.organisms.config import OrganismConfig, preset_config
from featalign.organisms.tasks import DOMAINS, FAMILIES, Problem, get_domain, sample_problems

__all__ = ["DOMAINS", "FAMILIES", "OrganismConfig", "Problem", "get_domain", "preset_config", "sample_problems"]
