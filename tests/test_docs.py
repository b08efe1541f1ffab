"""Docs: the pdoc API reference renders every public module, and the public API has docstrings."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build_api():
    spec = importlib.util.spec_from_file_location("featalign_docs_build_api", ROOT / "docs" / "build_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def api_dir(tmp_path_factory):
    pytest.importorskip("pdoc")
    out = tmp_path_factory.mktemp("api")
    modules = _build_api().build(out)
    return out, modules


def test_every_public_module_has_a_page(api_dir):
    out, modules = api_dir
    expected = _build_api().public_modules()
    assert modules == expected
    for must in ("featalign.interventions", "featalign.intervention_experiments", "featalign.crosscoder.model",
                 "featalign.analysis.attribution", "featalign.activations.store", "featalign.models"):
        assert must in expected
    assert not [m for m in expected if any(p.startswith("_") for p in m.split("."))]
    missing = [m for m in expected if not (out / (m.replace(".", "/") + ".html")).is_file()]
    assert not missing, f"no API page for {missing}"
    assert (out / "index.html").is_file()


@pytest.mark.parametrize("page, name", [
    ("featalign/intervention_experiments.html", "run_intervention"),
    ("featalign/interventions.html", "ablate"),
    ("featalign/interventions.html", "steer"),
    ("featalign/interventions.html", "intervene"),
    ("featalign/crosscoder/model.html", "Crosscoder"),
    ("featalign/analysis/attribution.html", "latent_scaling"),
    ("featalign/models.html", "load_model"),
])
def test_known_public_names_are_documented(api_dir, page, name):
    out, _ = api_dir
    html = (out / page).read_text()
    assert f'id="{name}"' in html, f"{name} has no entry in {page}"


# --- every public function / class has a docstring -------------------------------------------------

#: Modules whose public functions and classes must all carry a docstring.
DOCSTRING_MODULES = (
    "featalign.interventions", "featalign.intervention_experiments", "featalign.evaluation", "featalign.models",
    "featalign.tasks", "featalign.model_set", "featalign.generation", "featalign.distributed",
    "featalign.analysis.*", "featalign.crosscoder.*", "featalign.activations.*", "featalign.organisms.*",
)

#: Known gaps in files the documentation pass did not own (they were being edited elsewhere at the
#: time). Remove an entry once its docstring exists; a stale entry is reported, not failed.
UNOWNED_FILES_WITHOUT_DOCSTRINGS = {
    "featalign.intervention_experiments": {"TaskResult", "InterventionResult"},
    "featalign.crosscoder.hf": {"parse_hook", "contextlib_stack"},
    "featalign.crosscoder.train": {"sparsity_coef_at"},
}


def _modules(patterns) -> list[str]:
    names = _build_api().public_modules()
    out = []
    for pat in patterns:
        if pat.endswith(".*"):
            pkg = pat[:-2]
            out += [n for n in names if n == pkg or n.startswith(pkg + ".")]
        else:
            assert pat in names, f"{pat} is not a public module"
            out.append(pat)
    return sorted(set(out))


def _own_docstring(obj) -> str:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        # @dataclass writes "Name(field: type, ...)" when the class has no docstring
        if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
            return ""
        return doc.strip()
    return (obj.__doc__ or "").strip()


def _undocumented(module_name: str) -> list[str]:
    mod = importlib.import_module(module_name)
    out = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module_name:  # re-exported from elsewhere: checked there
            continue
        if not _own_docstring(obj):
            out.append(name)
    return out


def test_public_api_has_docstrings():
    missing, stale = [], []
    for m in _modules(DOCSTRING_MODULES):
        mod = importlib.import_module(m)
        if not (mod.__doc__ or "").strip():
            missing.append(f"{m} (module docstring)")
        allowed = UNOWNED_FILES_WITHOUT_DOCSTRINGS.get(m, set())
        undocumented = set(_undocumented(m))
        missing += [f"{m}.{n}" for n in sorted(undocumented - allowed)]
        stale += [f"{m}.{n}" for n in sorted(allowed - undocumented)]
    assert not missing, f"public functions/classes without a docstring: {missing}"
    if stale:
        print(f"allowlisted names that now have docstrings (remove them from the allowlist): {stale}")


# --- tables rendered from committed run outputs ------------------------------------------------------


def test_rendered_tables_agree_with_their_json():
    mod_spec = importlib.util.spec_from_file_location("featalign_docs_render", ROOT / "docs" / "render_tables.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)
    page = (ROOT / "docs" / "organisms.md").read_text()
    assert "<!-- table:organisms-default-2026-12-01 -->" in page
    assert render.render(page) == page, "docs/organisms.md disagrees with docs/data: run python docs/render_tables.py"
    # the check can fail: a hand-edited number is caught
    edited = page.replace("| **count** (in-domain) | 58.0 |", "| **count** (in-domain) | 60.4 |")
    assert edited != page and render.render(edited) != edited
