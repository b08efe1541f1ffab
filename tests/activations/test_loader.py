"""The store loader: exact epoch coverage, determinism, resume, DDP slices, bounded groups; streaming mode."""

from __future__ import annotations

import torch

import pytest

from featalign.activations import ActivationStore, StoreLayout, StoreWriter, StreamingActivations


N_ROWS = 6000


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ActivationStore:
    """A store whose row i holds the value i everywhere (so a row names its position); uneven shards."""
    layout = StoreLayout([{"name": n} for n in ("a", "b", "c")], ["h0", "h1"], d=4)
    root = tmp_path_factory.mktemp("loader") / "s"
    with StoreWriter(root, layout, shard_mb=700 * layout.row_bytes / 2**20) as w:
        start = 0
        for k, n in enumerate([300, 250, 500, 120, 700, 650, 480, 1000, 1000, 1000]):
            x = torch.arange(start, start + n, dtype=torch.float32)[:, None, None, None].expand(n, 3, 2, 4)
            w.add(x + torch.tensor([0.0, 0.25, 0.5, 0.75]), k, "src")
            start += n
        w.commit(k + 1, "src")
    st = ActivationStore(root)
    assert len(st) == N_ROWS and len(st.shards) >= 8
    return st


def _row_ids(batch: torch.Tensor) -> list[int]:
    ids = batch[:, 0, 0, 0]
    assert torch.equal(batch - ids[:, None, None, None], torch.tensor([0.0, 0.25, 0.5, 0.75]).expand_as(batch))
    return ids.long().tolist()


def test_epoch_covers_every_row_exactly_once(store):
    for seed in (0, 1):
        ld = store.loader(1000, seed=seed, buffer_shards=2, drop_last=False)
        batches = list(ld.epoch_batches(0))
        assert all(b.shape[1:] == (3, 2, 4) and b.dtype == torch.float32 for b in batches)
        ids = [i for b in batches for i in _row_ids(b)]
        assert sorted(ids) == list(range(len(store)))
        assert ids != list(range(len(store)))  # shuffled
    # drop_last: no duplicates, only whole batches
    ids = [i for b in store.loader(1000).epoch_batches(0) for i in _row_ids(b)]
    assert len(ids) == len(set(ids)) == 6000 // 1000 * 1000


def test_shuffle_mixes_shards(store):
    shard_of = torch.bucketize(torch.arange(len(store)), torch.tensor(store.offsets[1:]), right=True)
    b = next(iter(store.loader(512, seed=0, buffer_shards=2)))
    assert len(set(shard_of[_row_ids(b)].tolist())) == 2


def test_deterministic_per_seed_and_resumable(store):
    a = store.loader(700, seed=3)
    full = [next(a) for _ in range(20)]  # crosses epochs (8 batches per epoch)
    b = store.loader(700, seed=3)
    assert all(torch.equal(x, next(b)) for x in full[:11])
    state = b.state_dict()
    c = store.loader(700, seed=3)
    c.load_state_dict(state)
    assert all(torch.equal(x, next(c)) for x in full[11:])
    other = store.loader(700, seed=4)
    assert not torch.equal(next(other), full[0])
    assert not torch.equal(full[0], full[8])  # epoch 1 is another permutation


def test_ddp_slices_union_is_global_batch(store):
    g = next(store.loader(600, seed=2))
    parts = [next(store.loader(600, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat(parts), g)


def test_normalize_scales_mean_norm_to_sqrt_d(store):
    x = torch.cat(list(store.loader(1000, normalize=True, drop_last=False).epoch_batches(0)))
    torch.testing.assert_close(x.norm(dim=-1).mean(0), torch.full((3, 2), 2.0), rtol=1e-4, atol=1e-4)


def test_loader_satisfies_crosscoder_protocol(store):
    from featalign.crosscoder.data import ActivationSource

    ld = store.loader(256)
    assert isinstance(ld, ActivationSource)
    assert ld.models == ("a", "b", "c") and ld.norm_scales().shape == (3, 2)


def test_streaming_from_models_yields_the_stores_rows(trio, ref_store, small_cfg):
    from collections import Counter

    stored = Counter(r.numpy().tobytes() for r in ref_store.read())
    s = StreamingActivations(trio, None, batch_size=256, seed=0, buffer_rows=2048, config=small_cfg)
    got = [next(s) for _ in range(8)]
    assert all(b.shape == (256, 3, 2, 32) for b in got)
    streamed = Counter(r.numpy().tobytes() for b in got for r in b)
    assert not streamed - stored  # the same rows as the store made from the same stream
    first = ref_store.read(0, 8 * 256)
    assert not torch.equal(torch.cat(got), first)  # but shuffled
    s2 = StreamingActivations(trio, None, batch_size=256, seed=0, buffer_rows=2048, config=small_cfg)
    s2.load_state_dict({"pos": 5, "seed": 0})
    assert torch.equal(next(s2), got[5])
