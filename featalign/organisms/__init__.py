"""Model organisms: tiny base / RL / SFT models trained by featalign itself (the default of every CLI)."""

from featalign.organisms.config import OrganismConfig, preset_config
from featalign.organisms.tasks import DOMAINS, FAMILIES, Problem, get_domain, sample_problems

__all__ = [
    "DOMAINS", "FAMILIES", "OrganismConfig", "Organisms", "Problem", "build_organisms",
    "ensure_organisms", "get_domain", "preset_config", "sample_problems",
]


def __getattr__(name: str):
    # build.py imports evaluation.py, which imports tasks: keep the package import acyclic.
    if name in ("Organisms", "build_organisms", "ensure_organisms"):
        from featalign.organisms import build

        return getattr(build, name)
    raise AttributeError(f"module 'featalign.organisms' has no attribute {name!r}")
