"""`train_crosscoder --model-dirs` with name=path pairs or a model-set file: the same models, the same store."""

from __future__ import annotations

import pytest
import torch

from featalign.activations import ActivationStore
from featalign.cli import run_cli
from featalign.crosscoder import Crosscoder
from featalign.crosscoder.cli import main
from featalign.model_set import ModelSet
from tests.archs import tiny_random_model

SMALL = ["--n-tokens", "300", "--steps", "4", "--n-latents", "16", "--batch-size", "64", "--no-eval",
         "--hooks", "blocks.1.hook_resid_post", "--threads", "1"]


def test_model_set_file_equals_name_path_pairs(tmp_path, capsys):
    a = tiny_random_model("llama", tmp_path / "a", seed=0)
    b = tiny_random_model("llama", tmp_path / "b", seed=1)
    study = tmp_path / "study.json"
    ModelSet.from_args([f"base={a}", f"rl={b}"]).save(study)
    main(["--model-dirs", str(study), *SMALL, "--out", str(tmp_path / "from_file")])
    main(["--model-dirs", f"base={a},rl={b}", *SMALL, "--out", str(tmp_path / "from_pairs")])
    assert Crosscoder.load(tmp_path / "from_file").cfg.models == ("base", "rl")
    rows = [ActivationStore(tmp_path / d / "activations").read() for d in ("from_file", "from_pairs")]
    assert rows[0].shape[1] == 2 and torch.equal(rows[0], rows[1])
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: []\n")
    assert run_cli(main, "train", ["--model-dirs", str(bad), *SMALL, "--out", str(tmp_path / "bad")]) == 2
    assert "at least one model" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
