"""Seeds kept in the curvature's eigenbasis (gdig.engine.seeds): turned back, they are (F + lambda)^-1 grad L(s)
of a dense Kronecker reference; scores, self-influence and the mean direction equal those of seeds kept in the
weights' coordinates; the flag survives the seeds' file, and files without it read as the weights' coordinates."""

from __future__ import annotations

import pytest
import torch

from gdig.engine.curvature import Curvature, ModuleFactors
from gdig.engine.hooks import Captured
from gdig.engine.influence import Scorer
from gdig.engine.seeds import SeedGradients, mean_seed_direction, precondition_seeds

DIMS = {"a": (4, 5), "b": (6, 3)}  # (d_in, d_out)


def _orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[0].float()


def _curvature(gen: torch.Generator) -> Curvature:
    """An EK-FAC curvature with random bases and positive eigenvalues."""
    cur = Curvature("ekfac")
    for name, (d_in, d_out) in DIMS.items():
        lam = torch.rand(d_out, d_in, generator=gen) + 0.1
        cur.modules[name] = ModuleFactors(_orthogonal(d_in, gen), None, _orthogonal(d_out, gen), None, lam)
    return cur


def _dense_reference(cur: Curvature, name: str, g: torch.Tensor, damping: float) -> torch.Tensor:
    """(F + lambda)^-1 g with F = (Q_G kron Q_A) diag(Lambda) (Q_G kron Q_A)^T formed and solved densely."""
    f = cur.modules[name]
    k = torch.kron(f.q_g.double(), f.q_a.double())
    fisher = k @ torch.diag(f.lam.double().flatten() + damping) @ k.T
    flat = g.double().reshape(g.shape[0], -1)
    return torch.linalg.solve(fisher, flat.T).T.reshape(g.shape).float()


def _grads(gen: torch.Generator, n: int = 7) -> dict[str, torch.Tensor]:
    return {name: torch.randn(n, d_out, d_in, generator=gen) for name, (d_in, d_out) in DIMS.items()}


def test_seeds_are_kept_in_the_eigenbasis_and_turn_back_to_the_dense_reference():
    gen = torch.Generator().manual_seed(0)
    cur, grads = _curvature(gen), _grads(gen)
    dampings = {"a": 0.05, "b": 0.2}
    seeds = precondition_seeds(grads, cur, dampings)
    assert seeds.eigenbasis
    rotated = {n: cur.rotate(n, _dense_reference(cur, n, g, dampings[n])) for n, g in grads.items()}
    for name in grads:  # stored: X = Q_G^T V Q_A
        torch.testing.assert_close(seeds.dense[name], rotated[name], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eigenbasis"):
        seeds.matrix("a")
    assert seeds.to_weights(cur) is seeds and not seeds.eigenbasis
    for name, g in grads.items():
        expected = _dense_reference(cur, name, g, dampings[name])
        torch.testing.assert_close(seeds.dense[name], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(seeds.matrix(name, 2), seeds.dense[name][2])


def test_low_rank_factors_stay_in_the_weights_coordinates():
    """Factorised in the eigenbasis, the factors turned back: the best rank-r approximation of the reference V
    (a rotation keeps singular values)."""
    gen = torch.Generator().manual_seed(1)
    cur = Curvature("ekfac")
    cur.modules["w"] = ModuleFactors(_orthogonal(12, gen), None, _orthogonal(10, gen), None, torch.rand(10, 12) + 0.1)
    g = torch.randn(5, 10, 12, generator=gen)
    seeds = precondition_seeds({"w": g}, cur, {"w": 0.1}, rank=2)
    assert "w" in seeds.left and seeds.eigenbasis
    u, s, vh = torch.linalg.svd(_dense_reference(cur, "w", g, 0.1).double())
    best = (u[..., :2] * s[..., None, :2]) @ vh[..., :2, :]
    got = seeds.left["w"] @ seeds.right["w"].transpose(-2, -1)
    torch.testing.assert_close(got.double(), best, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("normalize", ["none", "unit"])
def test_scores_and_mean_direction_equal_those_of_seeds_in_the_weights_coordinates(normalize):
    gen = torch.Generator().manual_seed(2)
    cur, seed_grads, cand = _curvature(gen), _grads(gen, 4), _grads(gen, 3)
    dampings = {"a": 0.05, "b": 0.2}
    cap = Captured([0, 1, 2], torch.zeros(3), torch.ones(3), torch.ones(3, 1), {}, {}, weight_grads=cand)
    in_basis = precondition_seeds(seed_grads, cur, dampings)
    in_weights = precondition_seeds(seed_grads, cur, dampings).to_weights(cur)
    mean = mean_seed_direction(in_basis, normalize, cur)
    expected_mean = mean_seed_direction(in_weights, normalize)
    for name in DIMS:
        torch.testing.assert_close(mean[name], expected_mean[name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="curvature"):
        mean_seed_direction(in_basis, normalize)
    got = Scorer(in_basis, cur, dampings, normalize)(cap)
    expected = Scorer(in_weights, cur, dampings, normalize)(cap)
    torch.testing.assert_close(got.scores, expected.scores, rtol=1e-4, atol=1e-5)
    reference = sum(
        (g.flatten(1) @ _dense_reference(cur, n, seed_grads[n], dampings[n]).flatten(1).T) for n, g in cand.items()
    )
    if normalize == "none":  # no self-influence wanted: the seeds were turned back once, in place
        assert not in_basis.eigenbasis
        torch.testing.assert_close(got.scores, reference, rtol=1e-4, atol=1e-5)
    else:
        assert in_basis.eigenbasis and got.self_influence is not None


def test_the_flag_survives_the_seeds_file_and_older_files_read_as_weights(tmp_path):
    from safetensors.torch import save_file

    from gdig.rundir.seeds import load_seed_gradients, save_seed_gradients

    seeds = SeedGradients(dense={"a": torch.ones(2, 5, 4)}, self_influence=torch.ones(2), eigenbasis=True)
    save_seed_gradients(tmp_path / "new.safetensors", seeds, "fp")
    assert load_seed_gradients(tmp_path / "new.safetensors")[0].eigenbasis
    tensors = {"dense::a": torch.ones(2, 5, 4), "self_influence": torch.ones(2)}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"fingerprint": "fp", "lowrank_error": "{}"})
    assert not load_seed_gradients(tmp_path / "old.safetensors")[0].eigenbasis


@pytest.mark.parametrize("rank", [None, 2])
def test_a_capture_kept_in_the_eigenbasis_scores_as_one_with_its_gradients(rank):
    """The eigenvalue pass's rotations kept in place of the gradients (Captured.keep_rotation): the Scorer reads
    them, and dense or low-rank seeds (the rotation turned back) give the same bits as from the gradients, equal to
    the dense reference; the gradient is gone, and asking for it says why."""
    gen = torch.Generator().manual_seed(3)
    cur, seed_grads, cand = _curvature(gen), _grads(gen, 4), _grads(gen, 3)
    dampings = {"a": 0.05, "b": 0.2}
    seeds = precondition_seeds(seed_grads, cur, dampings, rank=rank)
    assert rank is None or set(seeds.left) == set(DIMS)

    def capture(keep: bool) -> Captured:
        grads = {n: g.clone() for n, g in cand.items()}
        cap = Captured([0, 1, 2], torch.zeros(3), torch.ones(3), torch.ones(3, 1), {}, {}, weight_grads=grads)
        cap.rotations = {} if keep else None
        for name in DIMS:
            cap.keep_rotation(name, cur.rotated(name, cap))
        return cap

    kept, fresh = capture(True), capture(False)
    assert kept.weight_grads == {} and set(kept.rotations) == set(DIMS) and fresh.rotations is None
    assert all(kept.works_from_gradient(n) and fresh.works_from_gradient(n) for n in DIMS)
    with pytest.raises(RuntimeError, match="only in the eigenbasis"):
        kept.gradient("a")
    scorer = Scorer(seeds, cur, dampings, "unit")
    got, expected = scorer(kept), scorer(fresh)
    assert torch.equal(got.scores, expected.scores) and torch.equal(got.self_influence, expected.self_influence)
    raw = scorer.raw_scores(capture(True)).scores
    reference = sum(
        g.flatten(1) @ _dense_reference(cur, n, seed_grads[n], dampings[n]).flatten(1).T for n, g in cand.items()
    )
    if rank is None:
        torch.testing.assert_close(raw, reference, rtol=1e-4, atol=1e-5)
    else:  # the seeds' own low-rank matrices, from the gradients in the weights' coordinates
        low = sum(g.flatten(1) @ (seeds.left[n] @ seeds.right[n].mT).flatten(1).T for n, g in cand.items())
        torch.testing.assert_close(raw, low, rtol=1e-4, atol=1e-5)
