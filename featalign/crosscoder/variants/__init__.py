"""Crosscoder variants, one file each, registered by name (`CrosscoderConfig(variant=name)`).

To add one: a file here with a `VariantConfig` dataclass and a `@register`-ed `Variant` subclass
(see `base.py` for the interface), and its import line below. Each variant's classes are imported
from its own module (`featalign.crosscoder.variants.batchtopk.BatchTopKConfig`).
"""

# the registry: importing a variant's file registers it
from featalign.crosscoder.variants import (  # noqa: F401
    batchtopk,
    jumprelu,
    l1,
    matryoshka,
)
from featalign.crosscoder.variants.base import (
    REGISTRY,
    TrainOutput,
    Variant,
    VariantConfig,
    field_help,
    has_field,
    help_field,
    register,
    variant_class,
)

__all__ = [
    "REGISTRY",
    "TrainOutput",
    "Variant",
    "VariantConfig",
    "field_help",
    "has_field",
    "help_field",
    "register",
    "variant_class",
]
