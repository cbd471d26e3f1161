"""EK-FAC (George et al. 2018; Grosse et al. 2023): K-FAC's eigenbasis with its eigenvalues refitted as the mean
squared per-example gradient in that basis, which K-FAC's product of the factors' eigenvalues only approximates.
The default: exact on a layer's own per-example second moments in its basis (tests/engine/test_curvature.py)."""

from gdig.hessians.base import FITTED, KRONECKER, Hessian

HESSIAN = Hessian("ekfac", "EK-FAC", "EK-FAC (default): K-FAC's eigenbasis, eigenvalues refitted", KRONECKER, FITTED)
