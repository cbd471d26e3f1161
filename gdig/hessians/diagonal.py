"""The diagonal approximation (as kronfluence's `diagonal` strategy): F ~ diag(mean over examples of the squared
per-example gradient), no rotation. EK-FAC's eigenvalue pass in the identity basis: one pass, no
eigendecomposition, factors of the weights' own size; it ignores every correlation between coordinates."""

from gdig.hessians.base import FITTED, IDENTITY, Hessian

HESSIAN = Hessian("diagonal", "Diagonal", "diagonal: mean squared gradient per weight, one pass", IDENTITY, FITTED)
