import dataclasses

import pytest

from featalign.config import JsonConfig, config_from_args, config_parser


@dataclasses.dataclass
class _Cfg(JsonConfig):
    out: str = "runs/x"
    steps: int = 10
    lr: float = 1e-3
    progress: bool = True
    dirs: str | None = None
    scale: float | None = None


def test_round_trip_and_unknown_fields(tmp_path):
    c = _Cfg(steps=3, dirs="a,b")
    c.save(tmp_path / "c.json")
    assert _Cfg.load(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['stpes'\]"):
        _Cfg.from_dict({"stpes": 3})
    assert c.diff(_Cfg()) == {"steps": (3, 10), "dirs": ("a,b", None)}


def test_config_parser_flags_override_the_file(tmp_path):
    _Cfg(steps=7, lr=0.5, out="from-file").save(tmp_path / "c.json")
    p = config_parser(_Cfg, {"steps": "training steps"}, "prog")
    assert "training steps (default: 10)" in " ".join(p.format_help().split())
    got = config_from_args(_Cfg, p.parse_args(["--config", str(tmp_path / "c.json"), "--steps", "9",
                                               "--progress", "false"]))
    assert got == _Cfg(out="from-file", steps=9, lr=0.5, progress=False)
    assert config_from_args(_Cfg, p.parse_args([])) == _Cfg()
    with pytest.raises(SystemExit):
        p.parse_args(["--steps", "many"])


def test_optional_number_flags_parse_as_numbers():
    p = config_parser(_Cfg, {}, "prog")
    assert config_from_args(_Cfg, p.parse_args(["--scale", "2.5"])).scale == 2.5
    assert config_from_args(_Cfg, p.parse_args([])).scale is None
