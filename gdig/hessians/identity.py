"""No curvature: influence is the plain dot product of gradients (TracIn-like); nothing is fitted or stored."""

from gdig.hessians.base import IDENTITY, Hessian

HESSIAN = Hessian("identity", "Identity", "identity: plain gradient dot products", IDENTITY, None)
