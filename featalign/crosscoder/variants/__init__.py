"""Crosscoder variants, one file each, registered by name (`CrosscoderConfig(variant=name)`).

To add one: a file here with a `VariantConfig` dataclass and a `@register`-ed `Variant` subclass
(see `base.py` for the interface), and its import line below. Each variant's classes are imported
from its own module (`featalign.crosscoder.variants.batchtopk.BatchTopKConfig`).
"""

from featalign.crosscoder.variants.base import (
    REGISTRY, TrainOutput, Variant, VariantConfig, field_help, has_field, help_field, register, variant_class,
)

# the registry: importing a variant's file registers it
from featalign.crosscoder.variants import l1, batchtopk, jumprelu  # noqa: E402, F401
from featalign.crosscoder.variants import matryoshka  # noqa: E402, F401

__all__ = ["REGISTRY", "TrainOutput", "Variant", "VariantConfig", "field_help", "has_field", "help_field", "register",
           "variant_class"]
