"""cache_activations against independent references: run_with_cache, numpy stats, an uninterrupted run."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import featalign.activations.store as store_mod
from featalign.activations import (
    ActivationStore, CacheConfig, ChecksumError, IncompatibleStoreError, NonFiniteActivationError,
    StoreLayout, StoreLockedError, StoreWriter, TaskSuiteSource, TensorSource, TextSource, cache_activations,
)
from featalign.models import ModelGroup

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]

TEXTS = ["add 12+5=17", "sort 9313=1339", "max 3 9 4 = 9", "rev abc=cba", "x", "count aab a=2"]


def _same_store(a: ActivationStore, b: ActivationStore) -> None:
    """Same shards (byte-identical), same stats, same rows."""
    assert [s["sha256"] for s in a.shards] == [s["sha256"] for s in b.shards]
    assert [s["rows"] for s in a.shards] == [s["rows"] for s in b.shards]
    assert a.manifest["stats"] == b.manifest["stats"]
    assert torch.equal(a.read(), b.read())


def test_rows_equal_run_with_cache_and_padding_excluded(trio, tmp_path):
    cfg = CacheConfig(hooks=tuple(HOOKS), n_tokens=10_000, batch_size=4, drop_bos=False)
    st = cache_activations(trio, TEXTS, out_dir=tmp_path / "s", config=cfg, progress=False)
    lengths = [len(trio.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert len(st) == sum(lengths)  # no padding rows (batches were padded to the longest text)
    x = st.read()
    for m_i, m in enumerate(trio.models):
        ref = []
        for t in TEXTS:
            _, cache = m.run_with_cache(torch.tensor([m.tokenizer(t)["input_ids"]]), names_filter=HOOKS)
            ref.append(torch.stack([cache[h][0] for h in HOOKS], dim=1))
        torch.testing.assert_close(x[:, m_i], torch.cat(ref), atol=1e-5, rtol=1e-5)
    # models differ (so the test would catch a model mix-up)
    assert (x[:, 0] - x[:, 1]).abs().max() > 1e-3


def test_drop_bos(trio, tmp_path):
    keep = cache_activations(trio, TEXTS, out_dir=tmp_path / "k", config=CacheConfig(hooks=tuple(HOOKS), drop_bos=False,
                             batch_size=4), progress=False).read()
    drop = cache_activations(trio, TEXTS, out_dir=tmp_path / "d", config=CacheConfig(hooks=tuple(HOOKS), drop_bos=True,
                             batch_size=4), progress=False).read()
    lengths = [len(trio.tokenizer(t)["input_ids"]) for t in TEXTS]
    starts = np.cumsum([0] + lengths[:-1])
    keep_idx = [i for i in range(sum(lengths)) if i not in set(starts)]
    assert torch.equal(drop, keep[keep_idx])


def test_stats_match_numpy_over_full_data(ref_store):
    x = ref_store.read().double().numpy()
    s = ref_store.stats()
    assert s.count == len(ref_store) == 6000
    np.testing.assert_allclose(s.mean_MHD.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.var_MHD.numpy(), x.var(0), rtol=1e-4, atol=1e-6)
    norms = np.linalg.norm(x, axis=-1).mean(0)
    np.testing.assert_allclose(s.mean_norm_MH.numpy(), norms, rtol=1e-5)
    np.testing.assert_allclose(ref_store.norm_scales().numpy(), np.sqrt(x.shape[-1]) / norms, rtol=1e-5)
    np.testing.assert_allclose(ref_store.manifest["stats"]["norm_scalar"], np.sqrt(x.shape[-1]) / norms, rtol=1e-5)
    assert len(ref_store.shards) >= 4


def test_manifest_records_layout_and_provenance(ref_store, small_cfg):
    m = ref_store.manifest
    assert m["models"] == ["base", "rl", "sft"] and m["hooks"] == HOOKS
    assert m["row_shape"] == [3, 2, 32] and m["dtype"] == "float32" and m["n_rows"] == 6000
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    assert "featalign_version" in m
    ref_store.check()


def test_resume_after_fault_equals_uninterrupted(trio, small_cfg, ref_store, tmp_path):
    commits = []

    def die_after_two(entry):
        commits.append(entry)
        if len(commits) == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        cache_activations(trio, None, out_dir=tmp_path / "s", config=small_cfg, on_commit=die_after_two, progress=False)
    partial = ActivationStore(tmp_path / "s")
    assert len(partial.shards) == 2 and len(partial) < 6000
    st = cache_activations(trio, None, out_dir=tmp_path / "s", config=small_cfg, progress=False)
    _same_store(st, ref_store)


def test_resume_after_sigkill_equals_uninterrupted(tiny_organisms, trio, small_cfg, ref_store, tmp_path):
    """A real SIGKILL (no cleanup runs) right after the 3rd shard, then the same call again."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from featalign.activations import cache_activations, CacheConfig
        from featalign.models import ModelGroup
        n = []
        def kill(entry):
            n.append(entry)
            if len(n) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        g = ModelGroup.from_paths({{k: str(v) for k, v in {tiny_organisms.default_trio()!r}.items()}})
        cache_activations(g, None, out_dir={str(tmp_path / 's')!r}, config=CacheConfig.from_json({small_cfg.to_json()!r}),
                          on_commit=kill, progress=False)
    """).replace("PosixPath", "str")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert len(ActivationStore(tmp_path / "s").shards) == 3
    st = cache_activations(trio, None, out_dir=tmp_path / "s", config=small_cfg,
                           progress=False)
    _same_store(st, ref_store)


def test_full_disk_mid_shard_keeps_store_valid_and_resumes(trio, small_cfg, ref_store, tmp_path, monkeypatch):
    real = store_mod.atomic_write_bytes
    calls = {"n": 0}

    def flaky(path, data):
        if str(path).endswith(".bin"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", flaky)
    with pytest.raises(OSError, match="intact up to its last shard"):
        cache_activations(trio, None, out_dir=tmp_path / "s", config=small_cfg, progress=False)
    partial = ActivationStore(tmp_path / "s")
    partial.check()  # earlier shards and manifest are valid
    assert len(partial.shards) == 2
    assert not [f for f in (tmp_path / "s" / "shards").iterdir() if f.name.endswith(".tmp")]
    monkeypatch.setattr(store_mod, "atomic_write_bytes", real)
    _same_store(cache_activations(trio, None, out_dir=tmp_path / "s", config=small_cfg, progress=False), ref_store)


def test_append_to_compatible_store_and_refuse_incompatible(trio, small_cfg, ref_store, tmp_path):
    first = CacheConfig.from_dict({**small_cfg.to_dict(), "n_tokens": 2500})
    cache_activations(trio, None, out_dir=tmp_path / "s", config=first, progress=False)
    st = cache_activations(trio, None, out_dir=tmp_path / "s", config=small_cfg, progress=False)
    assert len(st) == 6000
    # the first 2500 rows are the reference's; appending continued the same token stream
    torch.testing.assert_close(st.read(0, 2500), ref_store.read(0, 2500), atol=0, rtol=0)
    for bad in ({"dtype": "bfloat16"}, {"hooks": ("blocks.0.hook_resid_post",)}, {"drop_bos": False}):
        with pytest.raises(IncompatibleStoreError, match="different layout"):
            cache_activations(trio, None, out_dir=tmp_path / "s", config=CacheConfig.from_dict({**small_cfg.to_dict(), **bad}),
                              progress=False)
    # a different source is refused unless asked for (it would mix two token streams) ...
    bigger = CacheConfig.from_dict({**small_cfg.to_dict(), "n_tokens": 7000})
    for other in (TaskSuiteSource(seed=1), TaskSuiteSource(domains=("add",)), TEXTS):
        with pytest.raises(IncompatibleStoreError, match="another token source.*--allow-new-source"):
            cache_activations(trio, other, out_dir=tmp_path / "s", config=bigger, progress=False)
    assert len(ActivationStore(tmp_path / "s")) == 6000  # nothing appended
    # ... and then appends after the existing rows
    more = cache_activations(trio, TEXTS, out_dir=tmp_path / "s", config=bigger, progress=False, allow_new_source=True)
    assert len(more) == 6000 + sum(len(trio.tokenizer(t)["input_ids"]) - 1 for t in TEXTS)


def test_concurrent_writer_is_locked(ref_store):
    layout = StoreLayout.from_dict(ref_store.manifest["layout"])
    other_process = textwrap.dedent(f"""
        import json
        from featalign.activations import StoreWriter, StoreLayout, StoreLockedError
        try:
            StoreWriter({str(ref_store.root)!r}, StoreLayout.from_dict(json.loads({layout.to_json()!r})))
        except StoreLockedError as e:
            print(e)
            raise SystemExit(3)
    """)
    with StoreWriter(ref_store.root, layout):
        with pytest.raises(StoreLockedError, match="another process"):
            StoreWriter(ref_store.root, layout)
        r = subprocess.run([sys.executable, "-c", other_process], capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and "being written by another process" in r.stdout, r.stderr[-1000:]
    StoreWriter(ref_store.root, layout).close()  # released: a later writer gets in


def test_corrupted_shard_names_the_shard(ref_store, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(ref_store.root, root)
    f = root / ref_store.shards[1]["file"]
    b = bytearray(f.read_bytes())
    b[100] ^= 0xFF
    f.write_bytes(bytes(b))
    st = ActivationStore(root)
    st.shard(0)  # an intact shard still opens
    with pytest.raises(ChecksumError, match=ref_store.shards[1]["file"]):
        st.check()
    with pytest.raises(ChecksumError, match=ref_store.shards[1]["file"]):
        list(st.loader(256, drop_last=False).epoch_batches(0))


def test_nonfinite_activation_names_model_hook_batch(tiny_organisms, tmp_path):
    g = ModelGroup.from_paths(tiny_organisms.default_trio())
    bridge = g.models[1]
    with torch.no_grad():
        bridge.original_model.model.embed_tokens.weight[trio_token(g, "9")] = float("nan")
    texts = ["add 1+2=3"] * 8 + ["max 9 1 = 9"]
    with pytest.raises(NonFiniteActivationError, match=r"model 'rl' at hook 'blocks.0.hook_resid_post' in batch 2"):
        cache_activations(g, texts, out_dir=tmp_path / "s", config=CacheConfig(hooks=tuple(HOOKS), batch_size=4,
                          shard_mb=0.001), progress=False)
    assert len(ActivationStore(tmp_path / "s")) > 0  # the batches before are committed


def trio_token(g, ch: str) -> int:
    return g.tokenizer.convert_tokens_to_ids(ch)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_store_round_trip(trio, tmp_path, dtype):
    f32 = cache_activations(trio, TEXTS, out_dir=tmp_path / "f", config=CacheConfig(hooks=tuple(HOOKS)), progress=False)
    lo = cache_activations(trio, TEXTS, out_dir=tmp_path / "l", config=CacheConfig(hooks=tuple(HOOKS), dtype=dtype),
                           progress=False)
    tdt = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    assert torch.equal(lo.read(), f32.read().to(tdt).float())
    x = lo.read().double().numpy()  # stats describe the stored (rounded) values
    np.testing.assert_allclose(lo.stats().mean_MHD.numpy(), x.mean(0), rtol=1e-5, atol=1e-6)


def test_token_sources_agree(trio, tmp_path):
    from datasets import Dataset

    cfg = CacheConfig(hooks=tuple(HOOKS), batch_size=4)
    ref = cache_activations(trio, TextSource(TEXTS), out_dir=tmp_path / "t", config=cfg, progress=False).read()
    ids = [trio.tokenizer(t)["input_ids"] for t in TEXTS]
    T = max(map(len, ids))
    padded = torch.tensor([i + [0] * (T - len(i)) for i in ids])
    by_tensor = cache_activations(trio, TensorSource(padded, pad_id=0), out_dir=tmp_path / "p", config=cfg,
                                  progress=False).read()
    by_ds = cache_activations(trio, Dataset.from_dict({"text": TEXTS}), out_dir=tmp_path / "d", config=cfg,
                              progress=False).read()
    from featalign.activations import DatasetSource

    by_ds_ids = cache_activations(trio, DatasetSource(Dataset.from_dict({"ids": ids}), column="ids"),
                                  out_dir=tmp_path / "i", config=cfg, progress=False).read()
    assert torch.equal(ref, by_tensor) and torch.equal(ref, by_ds) and torch.equal(ref, by_ds_ids)


def test_task_suite_source_is_deterministic_and_has_answers(trio):
    a = TaskSuiteSource(chunk=4).sequences(trio.tokenizer)
    b = TaskSuiteSource(chunk=4).sequences(trio.tokenizer)
    seqs = [next(a) for _ in range(30)]
    assert seqs == [next(b) for _ in range(30)]
    text = trio.tokenizer.decode(seqs[0], skip_special_tokens=False)
    assert text.startswith("<bos>") and text.endswith("<eos>") and "=" in text
    from featalign.organisms import DOMAINS

    firsts = {trio.tokenizer.decode(s[1:], skip_special_tokens=True).split(" ")[0] for s in seqs[: len(DOMAINS)]}
    assert len(firsts) > 1  # domains are interleaved


def test_rerun_on_a_corrupted_store_refuses_to_append_or_report_it_healthy(ref_store, trio, small_cfg, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(ref_store.root, root)
    f = root / ref_store.shards[2]["file"]
    b = bytearray(f.read_bytes())
    b[7] ^= 0x01
    f.write_bytes(bytes(b))
    before = sorted(p.name for p in (root / "shards").iterdir())
    bigger = CacheConfig.from_dict({**small_cfg.to_dict(), "n_tokens": 8000})
    for cfg in (small_cfg, bigger):  # the finished store (nothing to append) and one that would grow
        with pytest.raises(ChecksumError, match=ref_store.shards[2]["file"]):
            cache_activations(trio, None, out_dir=root, config=cfg, progress=False)
    assert sorted(p.name for p in (root / "shards").iterdir()) == before  # nothing appended


def test_sizes_that_would_hang_or_write_nothing_are_refused(trio, tmp_path):
    for bad in ({"batch_size": 0}, {"n_tokens": 0}, {"n_tokens": -3}, {"context_size": 0}, {"shard_mb": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            CacheConfig(**bad)
    with pytest.raises(ValueError, match="at least one text"):
        cache_activations(trio, TextSource([]), out_dir=tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match="unknown domain 'chess'"):
        TaskSuiteSource(domains=("add", "chess"))
    assert not (tmp_path / "s").exists()
