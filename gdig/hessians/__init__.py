"""The table of Hessian approximations: one module each, one line here. Everything else asks this table (through
`hessian(name)`) and never compares an approximation's name."""

from gdig.hessians.base import Hessian
from gdig.hessians.ekfac import EKFAC
from gdig.hessians.identity import IDENTITY_HESSIAN
from gdig.hessians.kfac import KFAC

HESSIANS: dict[str, Hessian] = {
    h.name: h
    for h in (
        EKFAC,
        KFAC,
        IDENTITY_HESSIAN,
    )
}


def hessian(name: str) -> Hessian:
    """The approximation called `name` (ValueError naming the choices otherwise)."""
    if name not in HESSIANS:
        raise ValueError(f"--hessian must be one of {', '.join(HESSIANS)}, got {name!r}")
    return HESSIANS[name]


__all__ = ["HESSIANS", "Hessian", "hessian"]
