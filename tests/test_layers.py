"""The layers import downward only, and no module imports another package's private names.

Layers, bottom first (``kar.contracts`` explains them)::

    contracts → spark_jobs, validation → adaptors → ctr → serving → CLI, pipeline, benchmarks

Every import counts, also one inside a function or under ``TYPE_CHECKING``: a lazy upward import is still a
cycle waiting for the next refactor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kar", "spark_jobs", "validation", "adaptors", "ctr", "feature_repo")

# Module prefixes per layer, bottom first; the longest matching prefix places a module.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Process helpers (stdlib only) sit beside the contracts: the service, Redis and LLM server all start children.
    ("contracts", ("kar.contracts", "kar.processes", "kar.guard")),
    ("jobs", ("spark_jobs", "validation")),
    ("adaptors", ("adaptors",)),
    ("ctr", ("ctr",)),
    ("serving", ("kar.serving", "kar.feast", "kar.redis_server")),
    ("top", ("kar", "feature_repo")),
)


def layer_of(module: str) -> int:
    """Index of the layer of ``module`` (a dotted name), by its longest matching prefix."""
    best, best_len = -1, -1
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise ValueError(f"{module}: in no layer")
    return best


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every absolute import of a project module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, []) for a in node.names)
    return [(line, module, names) for line, module, names in found if module.split(".")[0] in PACKAGES]


def _target(module: str, name: str) -> str:
    """``from kar import store`` imports the module ``kar.store``; ``from kar.x import f`` a name of ``kar.x``."""
    candidate = f"{module}.{name}"
    as_path = ROOT.joinpath(*candidate.split("."))
    return candidate if as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file() else module


def upward_imports() -> list[str]:
    """``file:line: importer (layer) imports module (layer)`` for every import of a higher layer."""
    problems = []
    for path in _sources():
        importer = _module_name(path)
        for line, module, names in _imports(path):
            for target in {_target(module, n) for n in names} or {module}:
                if layer_of(target) > layer_of(importer):
                    problems.append(
                        f"{path.relative_to(ROOT)}:{line}: {importer} ({LAYERS[layer_of(importer)][0]}) imports "
                        f"{target} ({LAYERS[layer_of(target)][0]})"
                    )
    return problems


def private_imports() -> list[str]:
    """``file:line`` of every ``from other.module import _name`` outside the importer's own package."""
    problems = []
    for path in _sources():
        importer = _module_name(path)
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for line, module, names in _imports(path):
            if package and (module == package or module.startswith(package + ".")):
                continue  # a package's own modules may share private helpers
            problems.extend(
                f"{path.relative_to(ROOT)}:{line}: {module}.{name}" for name in names if name.startswith("_")
            )
    return problems


def test_every_module_has_a_layer():
    for path in _sources():
        layer_of(_module_name(path))


def test_no_layer_imports_a_higher_one():
    assert upward_imports() == []


def test_no_module_imports_private_names_of_another_package():
    assert private_imports() == []


@pytest.mark.parametrize(
    ("module", "layer"),
    [("kar.contracts.errors", "contracts"), ("kar.serving.store", "serving"), ("kar.cli", "top"),
     ("spark_jobs.prepare", "jobs"), ("ctr.trainer", "ctr"), ("kar.processes", "contracts")],
)  # fmt: skip
def test_modules_are_placed_by_their_longest_prefix(module, layer):
    assert LAYERS[layer_of(module)][0] == layer


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """A lazy import inside a function is found too: the check can fail."""
    source = tmp_path / "validation" / "bad.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from kar.serving import store\n    return store\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "kar" / "serving").mkdir(parents=True)
    (tmp_path / "kar" / "serving" / "store.py").write_text("")
    assert upward_imports() == ["validation/bad.py:2: validation.bad (jobs) imports kar.serving.store (serving)"]
