"""Gradient sketches (DESIGN section 1): per module P_out^T grad_W L(z) P_in, concatenated and L2-normalised,
checked against autograd weight gradients; the same sketches for any batch size and padding side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdig.engine.hooks import GradientCapture, make_batches
from gdig.engine.sketch import Sketcher, module_sketch_shape
from reference import autograd_gradients, tiny_layer_setup


@pytest.fixture(scope="module")
def setup(tokenizer, tmp_path_factory):
    model, tracked, toks = tiny_layer_setup(tokenizer, tmp_path_factory.mktemp("sketch"), n=9, seed=8)
    return model, tracked, toks, autograd_gradients(model, tracked, toks)


def sketches(model, tracked, toks, sketcher, batch_size, padding_side="right") -> np.ndarray:
    out = np.zeros((len(toks), sketcher.dim))
    with GradientCapture(model, tracked) as capture:
        for batch in make_batches(toks, range(len(toks)), 0, batch_size, None, padding_side):
            out[batch.index] = sketcher(capture.run(batch)).double().numpy()
    return out


def test_sketch_equals_the_projected_autograd_gradient(setup):
    model, tracked, toks, grads = setup
    dims = {t.name: (t.d_in, t.d_out) for t in tracked}
    sketcher = Sketcher(dims, 64, random_state=3, device=torch.device("cpu"))
    parts = []
    for t in tracked:
        p_out, p_in = sketcher.p_out[t.name].double().numpy(), sketcher.p_in[t.name].double().numpy()
        parts.append(np.einsum("ok,noi,il->nkl", p_out, grads[t.name], p_in).reshape(len(toks), -1))
    expected = np.concatenate(parts, axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = sketches(model, tracked, toks, sketcher, batch_size=4)
    assert got.shape == (len(toks), sketcher.dim) and sketcher.dim <= 64
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_sketches_do_not_depend_on_batching_or_padding(setup):
    model, tracked, toks, _ = setup
    sketcher = Sketcher({t.name: (t.d_in, t.d_out) for t in tracked}, 32, 0, torch.device("cpu"))
    one = sketches(model, tracked, toks, sketcher, batch_size=1)
    left = sketches(model, tracked, toks, sketcher, batch_size=5, padding_side="left")
    assert np.abs(one - left).max() < 1e-5


def test_projections_are_fixed_by_the_random_state():
    dims = {"m": (8, 12)}
    a, b = Sketcher(dims, 16, 1, torch.device("cpu")), Sketcher(dims, 16, 1, torch.device("cpu"))
    c = Sketcher(dims, 16, 2, torch.device("cpu"))
    assert torch.equal(a.p_in["m"], b.p_in["m"]) and not torch.equal(a.p_in["m"], c.p_in["m"])


@pytest.mark.parametrize(
    ("d_in", "d_out", "per", "shape"), [(64, 64, 16, (4, 4)), (2, 100, 16, (8, 2)), (5, 1, 9, (1, 3))]
)
def test_module_sketch_shape_is_as_square_as_the_layer_allows(d_in, d_out, per, shape):
    assert module_sketch_shape(d_in, d_out, per) == shape
