"""Model sets from CLI strings, files and the organisms; hub revisions; loading a group from a set."""

from __future__ import annotations

import json

import pytest
import torch

from featalign.model_set import ModelSet, parse_model_arg, split_revision
from tests.archs import tiny_random_model


def test_cli_strings_give_roles_series_and_revisions(tmp_path):
    ms = ModelSet.from_args(["base=Qwen/Qwen2.5-Math-1.5B@v1", "rl=/ckpt/grpo", "judge=/ckpt/other"],
                            ["rl=/ckpt/grpo-1, /ckpt/grpo-2"])
    assert ms.names == ["base", "rl", "judge"]
    assert (ms["base"].path, ms["base"].revision, ms["base"].role) == ("Qwen/Qwen2.5-Math-1.5B", "v1", "base")
    assert (ms["judge"].role, ms.role("rl").path) == ("other", "/ckpt/grpo")
    assert [(m.path, m.step, m.role) for m in ms.series["rl"]] == [("/ckpt/grpo-1", 1, "checkpoint"),
                                                                   ("/ckpt/grpo-2", 2, "checkpoint")]
    local = tmp_path / "run@2"
    local.mkdir()
    assert split_revision(str(local)) == (str(local), None)  # an existing folder is never split


@pytest.mark.parametrize("bad, match", [("base", "NAME=PATH"), ("=x", "NAME=PATH"), ("base=", "NAME=PATH")])
def test_bad_model_args_say_the_form(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_model_arg(bad)


def test_resolve_refuses_mixed_sources_and_lone_series():
    with pytest.raises(ValueError, match="not both"):
        ModelSet.resolve("set.json", models=["base=x"])
    with pytest.raises(ValueError, match="--model base=DIR"):
        ModelSet.resolve(series=["rl=a,b"])
    with pytest.raises(ValueError, match="unique"):
        ModelSet.from_args(["base=a", "base=b"])


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_file_round_trip(tmp_path, suffix):
    ms = ModelSet.from_args(["base=/a", "sft=/b@main"], ["sft=/b1,/b2"])
    path = tmp_path / f"models{suffix}"
    if suffix == ".json":
        ms.save(path)
    else:
        import yaml

        path.write_text(yaml.safe_dump(json.loads(ms.to_json())))
    assert ModelSet.load(path) == ms


def test_organisms_set_names_every_checkpoint(tiny_organisms):
    ms = ModelSet.organisms("tiny", tiny_organisms.root)
    assert ms.names == ["base", "rl", "sft"]
    n = tiny_organisms.config.n_checkpoints
    assert [m.path for m in ms.series["rl"]] == [str(tiny_organisms.model_dir("rl", ckpt=k)) for k in range(1, n + 1)]
    assert ms["sft"].path == str(tiny_organisms.model_dir("sft"))


def test_group_loads_the_set(tmp_path):
    a = tiny_random_model("llama", tmp_path / "a", seed=0)
    b = tiny_random_model("llama", tmp_path / "b", seed=1)
    group = ModelSet.from_args([f"base={a}", f"rl={b}"]).group()
    assert group.names == ["base", "rl"]
    wa = group.models[0].original_model.lm_head.weight
    wb = group.models[1].original_model.lm_head.weight
    assert not torch.equal(wa, wb)


def test_cache_cli_takes_a_model_set_file(tmp_path):
    from featalign.activations import cli as cache
    from featalign.activations import ActivationStore

    a = tiny_random_model("llama", tmp_path / "a", seed=0)
    b = tiny_random_model("llama", tmp_path / "b", seed=1)
    set_file = tmp_path / "study.json"
    ModelSet.from_args([f"base={a}", f"rl={b}"]).save(set_file)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"line {i}: the quick brown fox" for i in range(40)))
    out = tmp_path / "store"
    cache.main(["--model-set", str(set_file), "--text-file", str(text), "--n-tokens", "200",
                "--hook", "blocks.1.hook_resid_post", "--out", str(out)])
    store = ActivationStore(out)
    assert list(store.models) == ["base", "rl"] and len(store) == 200


def test_cache_cli_reads_a_task_set(tmp_path):
    """`--tasks FILE.jsonl` caches the task set's problems: the same rows as `TaskSetSource` through the API."""
    from featalign.activations import ActivationStore, TaskSetSource, cache_activations
    from featalign.activations import cli as cache
    from featalign.tasks import TaskSet

    a = tiny_random_model("llama", tmp_path / "a", seed=0)
    tasks = tmp_path / "gsm.jsonl"
    tasks.write_text("\n".join(json.dumps({"prompt": f"{i}+{i}=", "answer": f"#### {2 * i}"}) for i in range(30)))
    hook = "blocks.1.hook_resid_post"
    cache.main(["--model", f"base={a}", "--tasks", str(tasks), "--n-tokens", "150", "--hook", hook,
                "--out", str(tmp_path / "cli"), "--device", "cpu"])
    want = cache_activations(ModelSet.from_args([f"base={a}"]).group(), TaskSetSource(TaskSet.from_jsonl(tasks)),
                             hooks=[hook], out_dir=tmp_path / "api", n_tokens=150, progress=False)
    got = ActivationStore(tmp_path / "cli")
    assert len(got) == 150 and torch.equal(got.read(), want.read())
    with pytest.raises(SystemExit):
        cache.build_parser().parse_args(["--tasks", str(tasks), "--tasks-split", "test"])
