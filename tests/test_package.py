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
    for module in ("finetuning", "rescoring", "query", "evaluation"):  # a submodule imported since, as here,
        importlib.import_module(f"gdig.{module}")  # must not shadow a public name of the same spelling
    assert all(not inspect.ismodule(getattr(gdig, n)) for n in gdig.__all__)
    assert "score(ScoreConfig(" in gdig.__doc__ and "select_run(run" in gdig.__doc__


def _gdig_imports(path: Path) -> set[str]:
    """Every gdig module `path` imports, at the top or inside a function."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gdig"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gdig")}
    return found


def test_the_storage_and_the_process_layers_do_not_lean_on_each_other():
    process = {"gdig.distributed", "gdig.run", "gdig.stages", "gdig.hessians.fit"}
    for path in (ROOT / "gdig" / "rundir").glob("*.py"):
        assert not _gdig_imports(path) & process, path  # the run directory's files know no process or collective
    assert not any(m.startswith("gdig.rundir") for m in _gdig_imports(ROOT / "gdig" / "distributed.py"))
    assert _gdig_imports(ROOT / "gdig" / "cancel.py") == set()  # the stop both of them know, owned by neither
