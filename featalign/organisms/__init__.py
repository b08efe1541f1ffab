"""Model organisms: tiny base / RL / SFT models trained by featalign itself (the default of every CLI)."""

from featalign.organisms.build import Organisms, build_organisms, ensure_organisms
from featalign.organisms.config import OrganismConfig, preset_config
from featalign.organisms.tasks import DOMAINS, FAMILIES, Problem, get_domain, sample_problems

__all__ = [
    "DOMAINS", "FAMILIES", "OrganismConfig", "Organisms", "Problem", "build_organisms",
    "ensure_organisms", "get_domain", "preset_config", "sample_problems",
]
