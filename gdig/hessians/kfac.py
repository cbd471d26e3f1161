"""K-FAC (Martens and Grosse 2015): F ~ A (x) G per module, eigenvalues e_G e_A^T; one pass over the fit set."""

from gdig.hessians.base import KRONECKER, PRODUCT, Hessian

HESSIAN = Hessian("kfac", "K-FAC", "K-FAC: Kronecker factors, one pass", KRONECKER, PRODUCT)
