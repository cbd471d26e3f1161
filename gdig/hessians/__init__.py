"""The table of Hessian approximations: one module each (gdig/hessians/NAME.py defines HESSIAN), one line here.
Everything else asks this table (through `hessian(name)`) and never compares an approximation's name."""

from importlib import import_module

from gdig.hessians.base import Hessian

APPROXIMATIONS = (  # in the order the settings offer them; the first is the default
    "ekfac",
    "kfac",
    "diagonal",
    "identity",
)
HESSIANS: dict[str, Hessian] = {m: import_module(f"{__name__}.{m}").HESSIAN for m in APPROXIMATIONS}


def hessian(name: str) -> Hessian:
    """The approximation called `name` (ValueError naming the choices otherwise)."""
    if name not in HESSIANS:
        raise ValueError(f"--hessian must be one of {', '.join(HESSIANS)}, got {name!r}")
    return HESSIANS[name]


__all__ = ["APPROXIMATIONS", "HESSIANS", "Hessian", "hessian"]
