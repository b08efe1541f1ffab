"""Two gloo ranks (torch.multiprocessing) write one store; rank 0 merges; equals the single-process store."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

from featalign.activations import ActivationStore, CacheConfig, cache_activations

TEXTS = [f"add {a}+{b}={a + b}" for a in range(7) for b in range(5)]
CFG = CacheConfig(hooks=("blocks.0.hook_resid_post",), n_tokens=100_000, batch_size=4, shard_mb=0.002)


def _worker(rank: int, init_file: str, paths: dict, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    from featalign.models import ModelGroup

    cache_activations(ModelGroup.from_paths(paths), TEXTS, out_dir=out, config=CFG, progress=False)
    torch.distributed.destroy_process_group()


def test_two_ranks_merge_to_the_single_process_store(trio, tiny_organisms, tmp_path):
    paths = {k: str(v) for k, v in tiny_organisms.default_trio().items()}
    mp.start_processes(_worker, args=(str(tmp_path / "init"), paths, str(tmp_path / "ddp")), nprocs=2,
                       start_method="spawn")
    ddp = ActivationStore(tmp_path / "ddp")
    ddp.check()
    single = cache_activations(trio, TEXTS, out_dir=tmp_path / "one", config=CFG, progress=False)
    assert ddp.manifest["ranks"] == [0, 1] and {s["file"][7:11] for s in ddp.shards} == {"r000", "r001"}
    assert len(ddp) == len(single)
    key = lambda x: sorted(r.numpy().tobytes() for r in x)  # noqa: E731
    assert key(ddp.read()) == key(single.read())  # same rows, each once
    for a, b in zip(vars(ddp.stats()).values(), vars(single.stats()).values()):
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-6, atol=1e-7)
