"""What an approximation of the Hessian is made of (DESIGN section 1), torch-free so that the settings can list them.

Every approximation here preconditions in an eigenbasis: (F + lambda)^-1 v = Q (Q^T v / (Lambda + lambda)) Q^T with
Q = Q_G (x) Q_A per module. They differ in two choices: the basis (the eigenvectors of the Kronecker factors
A = E[a a^T] and G = E[g g^T], or the identity) and the eigenvalues Lambda (the Kronecker product e_G e_A^T of the
factors' eigenvalues, or fitted as the mean squared per-example gradient in the basis, or none at all: no
curvature). The fit, the storage, the plan's memory and time terms and the preconditioning all follow from them.
"""

from __future__ import annotations

from dataclasses import dataclass

KRONECKER = "kronecker"  # the eigenvectors of A and G (a covariance pass, then an eigendecomposition)
IDENTITY = "identity"  # no rotation
PRODUCT = "product"  # Lambda = e_G e_A^T, from the covariance pass
FITTED = "fitted"  # Lambda = mean over examples of (Q_G^T grad_W L(z) Q_A)^2: a pass of its own

COVARIANCE_PASS = "fit_covariance"
EIGENVALUE_PASS = "fit_eigen"


@dataclass(frozen=True)
class Hessian:
    """One approximation of the Hessian: its name (`--hessian`), label, help, basis and eigenvalues."""

    name: str
    label: str
    help: str
    basis: str  # KRONECKER | IDENTITY
    eigenvalues: str | None  # PRODUCT | FITTED | None (no curvature: plain gradient dot products)

    @property
    def fitted(self) -> bool:
        """Whether there is anything to fit and store (false: the preconditioner is the identity)."""
        return self.eigenvalues is not None

    @property
    def eigendecomposes(self) -> bool:
        """Whether the fit eigendecomposes A and G (a covariance pass, d^3 per side and module)."""
        return self.fitted and self.basis == KRONECKER

    @property
    def passes(self) -> tuple[str, ...]:
        """The fit's passes over the fit set, in order (each a stage of the run)."""
        first = (COVARIANCE_PASS,) if self.eigendecomposes else ()
        return first + ((EIGENVALUE_PASS,) if self.eigenvalues == FITTED else ())

    def factor_numbers(self, d_in: int, d_out: int) -> int:
        """Numbers stored per module (float32 on disk and in memory): the bases and the eigenvalues Lambda (the
        bases' own eigenvalue vectors, d_in + d_out, are left out as negligible)."""
        if not self.fitted:
            return 0
        bases = d_in * d_in + d_out * d_out if self.basis == KRONECKER else 0
        return bases + d_in * d_out

    def rotation_flops(self, d_in: int, d_out: int) -> int:
        """Floating-point operations per token to take a gradient into the basis and scale it by Lambda."""
        if not self.fitted:
            return 0
        rotate = 2 * (d_in * d_in + d_out * d_out) if self.basis == KRONECKER else 0
        return rotate + 2 * d_in * d_out
