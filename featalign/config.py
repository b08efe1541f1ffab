"""One config system: dataclasses that round-trip to JSON and refuse unknown fields."""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="JsonConfig")


@dataclasses.dataclass
class JsonConfig:
    """Base for every featalign config: `to_dict`/`from_dict`, `save`/`load`, `diff`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields are {sorted(names)}")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            # Nested configs and tuples survive the JSON trip.
            if isinstance(f.type, str) and v is not None:
                if "tuple" in f.type and isinstance(v, list):
                    v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            kwargs[f.name] = _check_type(cls.__name__, f, v)
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        from featalign.io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def diff(self, other: JsonConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ, as {name: (self, other)} (used to refuse mixed configs)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _check_type(owner: str, f: dataclasses.Field, v: Any) -> Any:
    """`v` if it fits the field's annotation (an int is accepted for a float), else a ValueError naming
    the field, the expected type and the value: a config file with `"steps": "600"` fails here, at load
    time, and not deep inside a run. Annotations this does not understand are not checked."""
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    options = [a.strip() for a in ann.split("|")]
    kinds = {a.split("[")[0] for a in options}
    if v is None:
        if "None" in kinds:
            return v
    elif isinstance(v, bool):
        if "bool" in kinds:
            return v
    elif isinstance(v, numbers.Integral):
        if "int" in kinds:
            return int(v)
        if "float" in kinds:
            return float(v)
    elif isinstance(v, numbers.Real):
        if "float" in kinds:
            return float(v)
    elif isinstance(v, str):
        if "str" in kinds:
            return v
    elif isinstance(v, (list, tuple)):
        if kinds & {"tuple", "list", "Sequence"}:
            return v
    elif isinstance(v, dict):
        if kinds & {"dict", "Mapping"}:
            return v
    if not kinds <= {"None", "bool", "int", "float", "str", "tuple", "list", "dict", "Sequence", "Mapping"}:
        return v  # a type this check does not model (e.g. a Tensor field)
    raise ValueError(f"{owner}: field {f.name!r} must be {ann}, got {v!r} ({type(v).__name__})")


def parse_bool(s: str) -> bool:
    """`true/false/yes/no/on/off/1/0` for CLI flags built from config fields."""
    import argparse

    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def config_parser(
    cls: type[JsonConfig], help: dict[str, str], prog: str, description: str | None = None, repeated: Sequence[str] = ()
):
    """An argparse parser with `--config FILE.json` and one `--field-name` flag per field of `cls`
    (int/float/bool/str by the field's annotation); `config_from_args` turns its result into `cls`.
    Fields named in `repeated` (tuples of strings, e.g. `--model NAME=DIR`) take their flag once per value."""
    import argparse

    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help=f"JSON file with {cls.__name__} fields (flags override it)")
    for f in dataclasses.fields(cls):
        name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        name = next((a.strip() for a in name.split("|") if a.strip() != "None"), name)  # `float | None` -> float
        parsers: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": parse_bool}
        t = parsers.get(name, str)
        if f.name in repeated:
            p.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action="append",
                default=None,
                help=f"{help.get(f.name, '')} (repeat for each)",
            )
            continue
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=t,
            default=None,
            help=f"{help.get(f.name, '')} (default: {f.default})",
        )
    return p


def config_from_args(cls: type[T], args) -> T:
    """`cls` from a `config_parser` namespace: the `--config` file's fields, then the given flags."""
    d = cls.load(args.config).to_dict() if getattr(args, "config", None) else {}
    d |= {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    return cls.from_dict(d)


def cli_config(
    cls: type[T],
    help: dict[str, str],
    prog: str,
    description: str | None = None,
    argv: list[str] | None = None,
    repeated: Sequence[str] = (),
) -> T:
    """Parse `argv` with `config_parser` into `cls` (the whole CLI of a script built on one config);
    `repeated` as in `config_parser` (the model-set flags `--model` / `--series` of the examples)."""
    return config_from_args(cls, config_parser(cls, help, prog, description, repeated).parse_args(argv))


def start_run(cfg: JsonConfig, out: str | Path) -> Path:
    """Create `out` and `out/figures` and save `cfg` as `out/config.json` next to the results."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    return out
