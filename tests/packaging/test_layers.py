"""The package's folders are its layers, and imports point down only.

Every import in pretrace/ and the Dagster folders (including imports inside functions) is read
from the source; an import of a higher layer, of Dagster from the science, or of the Dagster
folders by their bare top-level names fails here with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A module may import its own layer and the layers before it.
LAYERS = (
    "pretrace",  # the base modules: pretrace.errors, pretrace.config
    "pretrace.store",
    "pretrace.model",
    "pretrace.inputs",
    "pretrace.demo",
    "pretrace.influence",
    "pretrace.analyses",
    "pretrace.evaluation",
    "pretrace.planning",
    "pretrace.project",
    "pretrace.report",
    "pretrace.resources",
    "pretrace.assets",
    "pretrace.pipeline",
    "pretrace.testing",  # shared by tests and benches; nothing in the product imports it
)
DAGSTER_LAYERS = {
    "pretrace.resources",
    "pretrace.assets",
    "pretrace.pipeline",
    "pretrace.testing",
}  # may import Dagster
FOLDERS = {
    "pretrace": "pretrace",
    "resources": "pretrace.resources",
    "assets": "pretrace.assets",
    "pipeline": "pretrace.pipeline",
}


def module_name(path: Path, root: Path = ROOT) -> str:
    """The installed name of a source file (the Dagster folders install under pretrace)."""
    rel = path.relative_to(root).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    """The layer of a pretrace module: its subpackage, or the base for top-level modules."""
    parts = module.split(".")
    candidate = ".".join(parts[:2])
    return candidate if candidate in LAYERS else "pretrace"


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module
            found.append((node.lineno, module))
            # `from pretrace.x import module` names a submodule: its layer is the submodule's
            found += [
                (node.lineno, f"{module}.{alias.name}")
                for alias in node.names
                if (root / module.replace(".", "/") / f"{alias.name}.py").exists()
            ]
    return found


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def violations(path: Path, root: Path = ROOT) -> list[str]:
    own = layer(module_name(path, root))
    rank = LAYERS.index(own)
    out = []
    for line, module in imports(path, root):
        where = f"{path.relative_to(root)}:{line}"
        top = module.split(".")[0]
        if top in ("assets", "resources", "pipeline"):
            out.append(f"{where} imports {module}: use pretrace.{module}")
        elif top in ("tests", "bench"):
            out.append(f"{where} imports {module}: the package never imports tests or benches")
        elif top.startswith("dagster") and own not in DAGSTER_LAYERS:
            out.append(f"{where} imports {module}: the science in pretrace/ never imports Dagster")
        elif top == "pretrace" and LAYERS.index(layer(module)) > rank:
            out.append(f"{where} ({own}) imports {module} ({layer(module)}), a layer above it")
    return out


def test_every_source_file_is_in_a_layer():
    assert len(sources()) > 100
    for path in sources():
        assert layer(module_name(path)) in LAYERS


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    assert violations(path) == []


def test_an_upward_import_is_caught(tmp_path):
    """The check itself can fail: a file in store/ importing the report, and Dagster, is reported."""
    fake = tmp_path / "pretrace" / "store" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from pretrace.report.build import Report\n    import dagster\n")
    found = violations(fake, tmp_path)
    assert len(found) == 2 and "a layer above it" in found[0] and "never imports Dagster" in found[1]


def test_each_package_says_what_it_is_and_what_it_may_import():
    for package in LAYERS[1:]:
        short = package.removeprefix("pretrace.")
        folder = ROOT / (short if short in FOLDERS else package.replace(".", "/"))
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"{folder}/__init__.py: say what it is and what it may import"
