import shutil

import numpy as np
import pytest

from featalign.organisms.cli import main
from featalign.organisms.config import OrganismConfig


def test_cli_reopens_a_built_folder(tiny_organisms, capsys):
    assert main(["build", "--preset", "tiny", "--out", str(tiny_organisms.root)]) == 0
    out = capsys.readouterr().out
    assert "organisms ready" in out and "| add |" in out


def test_cli_help_and_domains(capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", "--help"])
    assert e.value.code == 0
    assert "--post-train-domains" in capsys.readouterr().out
    assert main(["domains"]) == 0
    lines = {line.split()[0]: line.split()[1:3] for line in capsys.readouterr().out.splitlines()}
    assert lines["lookup"] == ["knowledge", "default,tiny"]
    assert lines["countcmp"] == ["counting", "structured,structured-tiny"]


def test_cli_refuses_unknown_domain():
    with pytest.raises(ValueError, match="unknown domain 'chess'"):
        main(["build", "--preset", "tiny", "--post-train-domains", "add,chess", "--out", "/nonexistent/x"])


def test_extra_post_train_domain_gives_transfer_matrix(tiny_organisms, tmp_path):
    root = tmp_path / "org"
    shutil.copytree(tiny_organisms.root, root)
    assert main(["build", "--preset", "tiny", "--out", str(root), "--post-train-domains", "sub"]) == 0
    cfg = OrganismConfig.load(root / "config.json")
    dom = tiny_organisms.config.post_train_domains[0]
    assert cfg.post_train_domains == (dom, "sub")  # merged, base reused
    from featalign.io import read_json

    s = read_json(root / "eval" / "summary.json")
    for kind in ("sft", "rl"):
        t = s["transfer"][kind]
        m = np.array(t["delta_points"])
        assert m.shape == (2, 10) and t["train_domains"] == [dom, "sub"]
        # the matrix is exactly tuned-minus-base accuracy from the accuracy table
        for i, td in enumerate(t["train_domains"]):
            for j, ed in enumerate(t["eval_domains"]):
                ref = 100 * (s["accuracy"][f"{kind}-{td}"][ed] - s["accuracy"]["base"][ed])
                assert m[i, j] == pytest.approx(ref)
        assert t["cmh"]["in_domain"]["n_strata"] == 2 and t["cmh"]["out_of_domain"]["n_strata"] == 18
    assert (root / "sft-sub" / "ckpt-5" / "model.safetensors").exists()
