"""Activation caching: N models on the same tokens -> a sharded on-disk store -> shuffled batches.

Usage:

    store = cache_activations({"base": p0, "rl": p1}, hooks=["blocks.1.hook_resid_post"],
                              out_dir="acts", n_tokens=1_000_000)
    for x_BMHD in store.loader(batch_size=4096, seed=0): ...
"""

from featalign.activations.cache import (
    CacheConfig,
    StreamingActivations,
    batch_rows,
    cache_activations,
    token_batches,
)
from featalign.activations.loader import ActivationLoader
from featalign.activations.normalization import estimate_norm_scales
from featalign.activations.sources import (
    DatasetSource,
    DomainMixtureSource,
    TaskSetSource,
    TaskSuiteSource,
    TensorSource,
    TextSource,
    TokenSource,
    as_source,
    encode_problem,
)
from featalign.activations.store import (
    ActivationStore,
    ChecksumError,
    IncompatibleStoreError,
    Moments,
    NonFiniteActivationError,
    StoreError,
    StoreLayout,
    StoreLockedError,
    StoreStats,
    StoreWriter,
    merge_manifests,
)
from featalign.models.hooks import capture, default_hook, resolve_hooks, stop_layer

__all__ = [
    "ActivationLoader",
    "ActivationStore",
    "CacheConfig",
    "ChecksumError",
    "DatasetSource",
    "DomainMixtureSource",
    "IncompatibleStoreError",
    "Moments",
    "NonFiniteActivationError",
    "StoreError",
    "StoreLayout",
    "StoreLockedError",
    "StoreStats",
    "StoreWriter",
    "StreamingActivations",
    "TaskSetSource",
    "TaskSuiteSource",
    "TensorSource",
    "TextSource",
    "TokenSource",
    "as_source",
    "batch_rows",
    "cache_activations",
    "capture",
    "default_hook",
    "encode_problem",
    "estimate_norm_scales",
    "merge_manifests",
    "resolve_hooks",
    "stop_layer",
    "token_batches",
]
