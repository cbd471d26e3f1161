"""The shape of the package (docs/ARCHITECTURE.md): short modules, a docstring on every public function and class,
no Streamlit in gdig/, and the formatter decides the layout."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "gdig").rglob("*.py"))
MAX_LINES = 350


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_short_and_documents_every_public_name(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_LINES
    tree = ast.parse(text)
    assert ast.get_docstring(tree), "a module docstring that says why"
    undocumented = []

    def visit(node, prefix=""):
        for n in getattr(node, "body", []):
            if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_"):
                if not ast.get_docstring(n):
                    undocumented.append(f"{prefix}{n.name} (line {n.lineno})")
                if isinstance(n, ast.ClassDef):
                    visit(n, f"{n.name}.")

    visit(tree)
    assert not undocumented


def test_the_package_has_no_streamlit_and_the_formatter_decides():
    for path in MODULES:
        assert "import streamlit" not in path.read_text(), path
    for folder in ("gdig", "app_pages", "bench", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "fmt: " + "skip" not in path.read_text(), path


def test_the_public_api_is_exported_with_an_example():
    import inspect

    import gdig

    assert gdig.__version__.count(".") == 2
    for name in (n for n in gdig.__all__ if n != "__version__"):
        obj = getattr(gdig, name)
        assert inspect.isclass(obj) or inspect.isfunction(obj), name  # no module or constant re-exported by chance
        assert obj.__module__.startswith("gdig.") and inspect.getdoc(obj), name
    for module in ("pipeline.finetuning", "pipeline.rescoring", "pipeline.query", "pipeline.evaluation", "demo"):
        importlib.import_module(f"gdig.{module}")  # a submodule imported since must not shadow a public name
    assert all(not inspect.ismodule(getattr(gdig, n)) for n in gdig.__all__)
    assert "score(ScoreConfig(" in gdig.__doc__ and "select_run(run" in gdig.__doc__


def test_the_storage_and_the_process_layers_do_not_lean_on_each_other():
    process = {"gdig.engine.distributed", "gdig.pipeline.run", "gdig.pipeline.stages", "gdig.engine.curvature_fit"}
    for path in (ROOT / "gdig" / "rundir").glob("*.py"):
        assert not _runtime_imports(path) & process, path  # the run directory's files know no process or collective
    assert not any(m.startswith("gdig.rundir") for m in _runtime_imports(ROOT / "gdig" / "engine" / "distributed.py"))
    assert _runtime_imports(ROOT / "gdig" / "cancel.py") == set()  # the stop both of them know, owned by neither


# The layers of gdig, lowest first: a module imports only from its own layer or below (docs/ARCHITECTURE.md).
LAYERS = (
    ("gdig.atomic", "gdig.cancel", "gdig.names", "gdig.options", "gdig.config", "gdig.hessians"),
    ("gdig.inputs",),
    ("gdig.engine",),
    ("gdig.selection",),
    ("gdig.rundir",),
    ("gdig.planning", "gdig.pipeline"),
    ("gdig.outputs",),
    ("gdig.studio",),
    ("gdig.demo", "gdig.cli_", "gdig.__main__", "gdig.__init__"),
)


def _layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p if p.endswith("_") else p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to docs/ARCHITECTURE.md")


def _runtime_imports(path: Path) -> set[str]:
    """The gdig modules `path` imports when it runs (imports only a type checker reads are left out)."""
    import ast

    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gdig"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gdig")}
    return found


def test_no_layer_imports_from_a_layer_above_it():
    upward = []
    for path in sorted((ROOT / "gdig").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for imported in _runtime_imports(path):
            if imported != "gdig" and _layer(imported) > _layer(module):
                upward.append(f"{module} -> {imported}")
    assert upward == []


def test_every_layer_folder_has_its_test_folder():
    folders = [p.name for p in (ROOT / "gdig").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    assert {"inputs", "engine", "selection", "rundir", "pipeline", "outputs", "studio"} <= set(folders)
    missing = [f for f in folders if not any((ROOT / "tests" / f).glob("test_*.py"))]
    assert missing == []
