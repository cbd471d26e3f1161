"""K-FAC / EK-FAC per layer against explicit float64 statistics (as Bergson's ground-truth tests): the factors A
and G, EK-FAC's eigenvalue correction and the damped inverse of each tracked module; the same factors for any
batch size; a resumed fit equals an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gdig.cancel import Cancelled
from gdig.engine.curvature_fit import fit_curvature
from gdig.engine.hooks import GradientCapture, make_batches
from gdig.rundir.checkpoint import FitCheckpoint
from reference import autograd_gradients, dense_inverse, tiny_layer_setup, token_statistics


@pytest.fixture(scope="module")
def setup(tokenizer, tmp_path_factory):
    model, tracked, toks = tiny_layer_setup(tokenizer, tmp_path_factory.mktemp("curvature"), n=12, seed=5)
    return model, tracked, toks, token_statistics(model, tracked, toks), autograd_gradients(model, tracked, toks)


def fit(model, tracked, toks, kind, batch_size, pad_id=0, checkpoint=None, stop_after=None, shared=None):
    batches = list(make_batches(toks, range(len(toks)), pad_id, batch_size))

    def passes(stage, mine, restored):
        with GradientCapture(model, tracked) as capture:
            for b in mine:
                if stop_after is not None and stage == "fit_eigen" and b == stop_after:
                    raise Cancelled("test")
                yield b, capture.run(batches[b])

    dims = {t.name: (t.d_in, t.d_out) for t in tracked}
    costs = [b.input_ids.numel() for b in batches]
    return fit_curvature(kind, dims, passes, costs, torch.device("cpu"), checkpoint, shared=shared)


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_each_layers_factors_equal_the_explicit_statistics(setup, kind):
    model, tracked, toks, stats, grads = setup
    cur = fit(model, tracked, toks, kind, batch_size=3)
    assert cur.n_examples == len(toks)
    for t in tracked:
        f = cur.modules[t.name]
        a_ref = sum(s[t.name][0].T @ s[t.name][0] for s in stats) / sum(s[t.name][0].shape[0] for s in stats)
        g_ref = sum(s[t.name][1].T @ s[t.name][1] for s in stats) / len(stats)
        q_a, q_g = f.q_a.double().numpy(), f.q_g.double().numpy()
        assert rel(q_a @ np.diag(f.e_a.double().numpy()) @ q_a.T, a_ref) < 1e-5, t.name
        assert rel(q_g @ np.diag(f.e_g.double().numpy()) @ q_g.T, g_ref) < 1e-5, t.name
        if kind == "kfac":
            expected = np.outer(f.e_g.double().numpy(), f.e_a.double().numpy())
        else:  # EK-FAC: mean squared per-example gradient in the Kronecker eigenbasis
            expected = (np.einsum("ko,nkl,lj->noj", q_g, grads[t.name], q_a) ** 2).mean(0)
        assert rel(f.lam.double().numpy(), expected) < 1e-4, t.name


def test_the_diagonals_eigenvalues_are_each_weights_mean_squared_gradient(setup):
    model, tracked, toks, _, grads = setup
    cur = fit(model, tracked, toks, "diagonal", batch_size=5)
    assert cur.n_examples == len(toks)
    for t in tracked:
        f = cur.modules[t.name]
        assert f.q_a is None and f.q_g is None  # the identity basis: nothing but Lambda is stored
        assert rel(f.lam.double().numpy(), (grads[t.name] ** 2).mean(0)) < 1e-4, t.name


@pytest.mark.parametrize("kind", ["kfac", "ekfac", "diagonal"])
def test_each_layers_damped_inverse_equals_the_dense_one(setup, kind):
    model, tracked, toks, stats, grads = setup
    cur = fit(model, tracked, toks, kind, batch_size=4)
    for t in tracked:
        v = grads[t.name][:2]  # two gradients, (2, d_out, d_in)
        damping = cur.damping(t.name, None, 0.1)
        got = cur.precondition(t.name, torch.tensor(v, dtype=torch.float32), damping).double().numpy()
        dense = dense_inverse(stats, grads[t.name], t.name, kind, None, 0.1)
        expected = np.stack([(dense @ x.reshape(-1)).reshape(x.shape) for x in v])
        assert rel(got, expected) < 1e-4, t.name
        self_inf = cur.self_influence(t.name, torch.tensor(v, dtype=torch.float32), damping).double().numpy()
        assert np.allclose(self_inf, (v * expected).sum((1, 2)), rtol=1e-4), t.name


def test_factors_do_not_depend_on_the_batch_size(setup):
    model, tracked, toks, _, _ = setup
    one, many = fit(model, tracked, toks, "ekfac", batch_size=1), fit(model, tracked, toks, "ekfac", batch_size=5)
    for t in tracked:
        a, b = one.modules[t.name], many.modules[t.name]
        assert torch.allclose(a.e_a, b.e_a, rtol=1e-4, atol=1e-7) and torch.allclose(a.e_g, b.e_g, rtol=1e-4, atol=1e-9)
        assert rel(b.lam.double().numpy(), a.lam.double().numpy()) < 1e-4


@pytest.mark.parametrize("share", [False, True])
def test_a_cancelled_fit_resumes_to_the_same_factors_bit_for_bit(setup, tmp_path, share):
    model, tracked, toks, _, _ = setup
    shared = _same_input(model, tracked, toks) if share else None  # gate and up: one A sum, every G sum kept
    whole = fit(model, tracked, toks, "ekfac", batch_size=2, shared=shared)
    checkpoint = FitCheckpoint(tmp_path, "fp", every_seconds=0.0, rank=0)
    with pytest.raises(Cancelled):
        fit(model, tracked, toks, "ekfac", batch_size=2, checkpoint=checkpoint, stop_after=3, shared=shared)
    resumed = fit(
        model, tracked, toks, "ekfac", batch_size=2, checkpoint=FitCheckpoint(tmp_path, "fp", rank=0), shared=shared
    )
    for t in tracked:
        assert torch.equal(whole.modules[t.name].lam, resumed.modules[t.name].lam)
        assert torch.equal(whole.modules[t.name].q_a, resumed.modules[t.name].q_a)
        assert torch.equal(whole.modules[t.name].q_g, resumed.modules[t.name].q_g)


def _same_input(model, tracked, toks) -> dict[str, str]:
    with GradientCapture(model, tracked) as capture:
        return capture.run(next(make_batches(toks, range(2), 0, 2))).same_input


def test_eigendecomposing_with_release_frees_the_sums_and_gives_the_same_factors(setup):
    from gdig.engine.curvature_fit import CovarianceFitter

    model, tracked, toks, _, _ = setup
    dims = {t.name: (t.d_in, t.d_out) for t in tracked}
    fitters = [CovarianceFitter(dims, torch.device("cpu")) for _ in range(2)]
    with GradientCapture(model, tracked) as capture:
        for batch in make_batches(toks, range(len(toks)), 0, 4):
            cap = capture.run(batch)
            for fitter in fitters:
                fitter.update(cap)
    kept, released = fitters[0].eigendecompose("kfac"), fitters[1].eigendecompose("kfac", release=True)
    assert len(fitters[0].a) == len(dims) and not fitters[1].a and not fitters[1].g  # the float64 sums are gone
    for name in dims:
        assert torch.equal(kept.modules[name].lam, released.modules[name].lam)
        assert torch.equal(kept.modules[name].q_g, released.modules[name].q_g)


@pytest.mark.parametrize("d", [7, 600, 1536])
def test_the_covariance_sums_are_made_on_and_below_the_diagonal_which_is_all_eigh_reads(d):
    from gdig.engine.curvature_fit import add_lower_gram, gram_block_rows

    x = torch.randn(40, d, generator=torch.Generator().manual_seed(d))
    total = torch.zeros(d, d, dtype=torch.float64)
    add_lower_gram(total, x)
    add_lower_gram(total, x)  # sums over two batches
    full = 2 * (x.double().T @ x.double())
    lower = torch.ones(d, d, dtype=torch.bool).tril()
    torch.testing.assert_close(total[lower], full[lower], rtol=1e-5, atol=1e-4)
    entries = sum((hi - lo) * hi for lo, hi in gram_block_rows(d))
    assert int((total != 0).sum()) <= entries  # nothing above the block rows is touched
    assert entries == d * d if d < 512 else entries <= 0.75 * d * d  # a narrow side in one product; 58% at 1536
    e_lower, _ = torch.linalg.eigh(total, UPLO="L")
    torch.testing.assert_close(e_lower, torch.linalg.eigvalsh(full), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("kind", ["kfac", "ekfac"])
def test_modules_that_read_one_input_share_its_factor_bit_for_bit(setup, tmp_path, kind):
    from gdig.engine.curvature import FACTOR_KEYS
    from gdig.engine.curvature_fit import CovarianceFitter
    from gdig.rundir.factors import load_factors, save_factors

    model, tracked, toks, _, _ = setup
    with GradientCapture(model, tracked) as capture:
        cap = capture.run(next(make_batches(toks, range(2), 0, 2)))
    gate, up, down = (f"model.layers.{i}.mlp.{p}" for i, p in ((1, "gate_proj"), (1, "up_proj"), (1, "down_proj")))
    assert cap.same_input == {"model.layers.0.mlp.up_proj": "model.layers.0.mlp.gate_proj", up: gate}
    assert cap.acts[up] is cap.acts[gate] and down not in cap.same_input  # down reads the gated product
    assert up not in CovarianceFitter({t.name: (t.d_in, t.d_out) for t in tracked}, "cpu", cap.same_input).a
    plain, shared = fit(model, tracked, toks, kind, 3), fit(model, tracked, toks, kind, 3, shared=cap.same_input)
    for t in tracked:
        for key in FACTOR_KEYS:
            assert torch.equal(getattr(plain.modules[t.name], key), getattr(shared.modules[t.name], key))
    assert shared.modules[up].q_a is shared.modules[gate].q_a  # one tensor in memory
    save_factors(shared, tmp_path / "f.safetensors", "fp")
    with safe_open(str(tmp_path / "f.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert f"{gate}::q_a" in keys and f"{up}::q_a" not in keys and f"{up}::q_g" in keys
    for names in (None, [up]):
        loaded = load_factors(tmp_path / "f.safetensors", names=names)
        assert torch.equal(loaded.modules[up].q_a, plain.modules[up].q_a)
        assert torch.equal(loaded.modules[up].e_a, plain.modules[up].e_a)
    old = tmp_path / "old.safetensors"  # a file written before shared A factors: no "shared_a" metadata
    tensors = {f"{n}::{k}": getattr(f, k) for n, f in plain.modules.items() for k in FACTOR_KEYS}
    counts = {"n_examples": str(plain.n_examples), "n_tokens": str(plain.n_tokens)}
    save_file(tensors, str(old), metadata={"kind": kind, "modules": json.dumps(list(plain.modules))} | counts)
    loaded = load_factors(old)
    assert all(torch.equal(loaded.modules[t.name].q_a, plain.modules[t.name].q_a) for t in tracked)


def test_a_sharing_that_does_not_fit_the_modules_is_refused():
    from gdig.engine.curvature_fit import CovarianceFitter

    dims = {"a": (4, 3), "b": (4, 5), "c": (6, 5)}
    for shared in ({"a": "b"}, {"c": "a"}, {"b": "a", "c": "b"}, {"b": "z"}):
        with pytest.raises(ValueError, match="cannot share"):
            CovarianceFitter(dims, "cpu", shared)
    assert CovarianceFitter(dims, "cpu", {"b": "a"}).a.keys() == {"a", "c"}


def test_a_changed_input_sharing_is_an_error_not_wrong_sums(setup):
    from gdig.engine.curvature_fit import CovarianceFitter

    model, tracked, toks, _, _ = setup
    with GradientCapture(model, tracked) as capture:
        cap = capture.run(next(make_batches(toks, range(2), 0, 2)))
    wrong = {"model.layers.1.mlp.gate_proj": "model.layers.0.mlp.gate_proj"}  # as wide, but another input
    fitter = CovarianceFitter({t.name: (t.d_in, t.d_out) for t in tracked}, "cpu", wrong)
    with pytest.raises(RuntimeError, match="does not read the input"):
        fitter.update(cap)


@pytest.mark.parametrize("shape", [(1, 5, 3), (16, 40, 24), (8, 96, 8)])
def test_the_fast_reductions_equal_the_plain_ones(shape):
    """The eigenvalue pass's sum over the batch of squares and the whitened gradient's squared norms, both made
    without a squared copy, equal the plain sums (float64 references)."""
    from gdig.engine.curvature import squared_norms
    from gdig.engine.curvature_fit import batch_sum_of_squares

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    x = x.mT.contiguous().mT  # laid out transposed, as a rotation from left_multiply is
    x64 = x.double()
    torch.testing.assert_close(batch_sum_of_squares(x).double(), (x64 * x64).sum(0), rtol=1e-5, atol=0)
    torch.testing.assert_close(squared_norms(x).double(), (x64 * x64).sum((-2, -1)), rtol=1e-5, atol=0)
