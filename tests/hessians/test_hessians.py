"""The table of Hessian approximations: every setting lists exactly its entries, each entry's passes and terms
follow from its basis and eigenvalues, and no module outside gdig/hessians compares an approximation's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gdig
from gdig.config import ScoreConfig
from gdig.hessians import APPROXIMATIONS, HESSIANS, hessian
from gdig.hessians.base import COVARIANCE_PASS, EIGENVALUE_PASS, FITTED, IDENTITY, KRONECKER, PRODUCT
from gdig.options import specs

PACKAGE = Path(gdig.__file__).parent


def test_each_module_is_named_for_its_approximation():
    assert list(HESSIANS) == list(APPROXIMATIONS) and all(h.name == name for name, h in HESSIANS.items())
    assert specs(ScoreConfig)["hessian"].default == APPROXIMATIONS[0] == "ekfac"  # the first is the default


def test_the_setting_offers_exactly_the_table_with_each_entrys_help():
    spec = specs(ScoreConfig)["hessian"]
    assert spec.choices == tuple(HESSIANS) and "ekfac" in spec.choices and "identity" in spec.choices
    for h in HESSIANS.values():
        assert h.help in spec.help
    with pytest.raises(ValueError, match="--hessian must be one of ekfac, kfac"):
        hessian("fisher")


@pytest.mark.parametrize("name", list(HESSIANS))
def test_passes_and_terms_follow_from_the_basis_and_the_eigenvalues(name):
    h = hessian(name)
    assert (COVARIANCE_PASS in h.passes) == (h.basis == KRONECKER and h.fitted)
    assert (EIGENVALUE_PASS in h.passes) == (h.eigenvalues == FITTED)
    assert h.eigenvalues != PRODUCT or h.basis == KRONECKER  # the product needs the factors' eigenvalues
    assert h.fitted == bool(h.passes) == (h.factor_numbers(3, 5) > 0) == (h.rotation_flops(3, 5) > 0)
    if h.basis == IDENTITY and h.fitted:
        assert h.factor_numbers(3, 5) == 15  # only Lambda, d_out x d_in
    if h.basis == KRONECKER:
        assert h.factor_numbers(3, 5) == 9 + 25 + 15


def _compared_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every comparison in `path` with a string constant that names an approximation."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                values = part.elts if isinstance(part, ast.Tuple | ast.List | ast.Set) else [part]
                for v in values:
                    if isinstance(v, ast.Constant) and v.value in HESSIANS:
                        found.append((node.lineno, v.value))
    return found


def test_no_module_outside_the_table_compares_an_approximations_name():
    offenders = {
        str(p.relative_to(PACKAGE)): hits
        for p in sorted(PACKAGE.rglob("*.py"))
        if "hessians" not in p.parts and (hits := _compared_names(p))
    }
    assert offenders == {}
    assert _compared_names(PACKAGE / "hessians" / "__init__.py") == []  # the table holds entries, not branches


def test_the_checker_sees_a_comparison(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('if kind == "ekfac" or kind in ("kfac", "x"):\n    pass\n')
    assert _compared_names(probe) == [(1, "ekfac"), (1, "kfac")]
