"""``compare``'s math against dense float64 references, and the layer matching."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from factories import FakeAdapter, FakeLayer, planted_factors, write_peft

from lora_audit.commands.compare import compare_adapters, normalise_name, pair_layers
from lora_audit.formats import load_adapter
from lora_audit.linalg.subspaces import compare_factors, principal_angles

SRC = Path(__file__).resolve().parents[2] / "src" / "lora_audit"
SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"


def dense_reference(
    b_a: np.ndarray,
    a_a: np.ndarray,
    s_a: float,
    b_b: np.ndarray,
    a_b: np.ndarray,
    s_b: float,
    k: int,
) -> dict[str, object]:
    """Everything compare reports, from the materialised ΔW (float64, test only)."""
    w_a = s_a * b_a.astype(np.float64) @ a_a.astype(np.float64)
    w_b = s_b * b_b.astype(np.float64) @ a_b.astype(np.float64)
    u_a, _, vh_a = np.linalg.svd(w_a)
    u_b, _, vh_b = np.linalg.svd(w_b)
    left = np.sort(scipy.linalg.subspace_angles(u_a[:, :k], u_b[:, :k]))
    right = np.sort(scipy.linalg.subspace_angles(vh_a[:k].T, vh_b[:k].T))
    return {
        "norm_a": np.linalg.norm(w_a),
        "norm_b": np.linalg.norm(w_b),
        "diff": np.linalg.norm(w_a - w_b),
        "diff2": np.linalg.norm(w_a - w_b, 2),
        "cos": float((w_a * w_b).sum() / (np.linalg.norm(w_a) * np.linalg.norm(w_b))),
        "left": left,
        "right": right,
    }


def gapped(out: int, inp: int, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Factors with well-separated singular values, so the top-k subspaces are well defined."""
    spectrum = np.geomspace(8.0, 0.5, num=min(rank, out, inp))
    b, a = planted_factors(out=out, inp=inp, rank=rank, spectrum=spectrum, seed=seed)
    return b.double().numpy(), a.double().numpy()


@pytest.mark.parametrize(
    ("out", "inp", "r_a", "r_b", "k"),
    [(48, 32, 8, 8, 4), (40, 64, 16, 4, 4), (30, 20, 6, 12, 6), (24, 24, 3, 5, 3)],
)
def test_numbers_match_dense_reference(out: int, inp: int, r_a: int, r_b: int, k: int) -> None:
    b_a, a_a = gapped(out, inp, r_a, seed=1)
    b_b, a_b = gapped(out, inp, r_b, seed=2)
    # make B share part of A's update, so the angles are neither all 0 nor all 90°
    b_b = np.hstack([b_b, 0.5 * b_a[:, :2]])
    a_b = np.vstack([a_b, a_a[:2]])
    s_a, s_b = 2.0, 0.75
    m = compare_factors(
        *(torch.from_numpy(x) for x in (b_a, a_a, b_b, a_b)), scale_a=s_a, scale_b=s_b, top_k=k
    )
    ref = dense_reference(b_a, a_a, s_a, b_b, a_b, s_b, k)
    assert m.k == k
    assert m.norm_a == pytest.approx(ref["norm_a"], rel=1e-12)
    assert m.norm_b == pytest.approx(ref["norm_b"], rel=1e-12)
    assert m.difference_norm == pytest.approx(ref["diff"], rel=1e-10)
    assert m.difference_spectral_norm == pytest.approx(ref["diff2"], rel=1e-10)
    assert m.cosine == pytest.approx(ref["cos"], abs=1e-12)
    assert m.relative_difference == pytest.approx(ref["diff"] / ref["norm_a"], rel=1e-10)
    np.testing.assert_allclose(m.left_angles, ref["left"], atol=1e-7)
    np.testing.assert_allclose(m.right_angles, ref["right"], atol=1e-7)
    assert m.left_overlap == pytest.approx(float(np.mean(np.cos(ref["left"]) ** 2)), abs=1e-10)


def test_nearly_equal_updates_keep_their_small_difference() -> None:
    """The difference comes from a QR of the stacked factors, not from Gram traces."""
    b, a = gapped(64, 48, 8, seed=3)
    delta = 1e-9
    b2 = b.copy()
    b2[:, 0] *= 1 + delta
    m = compare_factors(
        *(torch.from_numpy(x) for x in (b, a, b2, a)), scale_a=1, scale_b=1, top_k=4
    )
    exact = delta * np.linalg.norm(np.outer(b[:, 0], a[0]))  # ΔW_A − ΔW_B = −δ·b₀a₀ᵀ
    assert m.difference_norm == pytest.approx(exact, rel=1e-5)
    assert m.left_angles[0] < 1e-7 and m.left_overlap == pytest.approx(1.0, abs=1e-12)


def test_identical_updates_with_different_factorisations() -> None:
    """B·A = (B·M)(M⁻¹·A): same update, zero difference, cosine 1, angles 0 — at any rank."""
    b, a = gapped(40, 30, 6, seed=4)
    mix = np.random.default_rng(0).standard_normal((6, 6)) + 3 * np.eye(6)
    pad_b = np.hstack([b @ mix, np.zeros((40, 4))])  # rank 10 in name, 6 in fact
    pad_a = np.vstack([np.linalg.solve(mix, a), np.random.default_rng(1).standard_normal((4, 30))])
    m = compare_factors(
        *(torch.from_numpy(x) for x in (b, a, pad_b, pad_a)), scale_a=1.0, scale_b=1.0, top_k=6
    )
    assert m.difference_norm <= 1e-12 * m.norm_a
    assert m.cosine == pytest.approx(1.0, abs=1e-12)
    assert max(m.left_angles) < 1e-6 and max(m.right_angles) < 1e-6


def test_planted_angles_are_recovered() -> None:
    """Subspaces rotated by known angles: θ comes back to ~1e-12 at every size."""
    rng = np.random.default_rng(5)
    n, k = 50, 4
    q, _ = np.linalg.qr(rng.standard_normal((n, 2 * k)))
    theta = np.array([1e-9, 1e-4, 0.7, math.pi / 2])
    q_a = q[:, :k]
    q_b = q[:, :k] * np.cos(theta) + q[:, k:] * np.sin(theta)
    np.testing.assert_allclose(principal_angles(q_a, q_b), theta, rtol=1e-6, atol=1e-12)


def test_zero_update_gives_no_subspace() -> None:
    b, a = gapped(20, 16, 4, seed=6)
    zero = np.zeros((20, 4))
    m = compare_factors(
        *(torch.from_numpy(x) for x in (b, a, zero, a)), scale_a=1, scale_b=1, top_k=4
    )
    assert m.k == 0 and m.left_overlap is None and m.cosine is None
    assert m.relative_difference == pytest.approx(1.0, rel=1e-12)
    m = compare_factors(
        *(torch.from_numpy(x) for x in (zero, a, b, a)), scale_a=1, scale_b=1, top_k=4
    )
    assert m.relative_difference is None


def test_shape_mismatch_is_refused() -> None:
    b, a = gapped(20, 16, 4, seed=7)
    b2, a2 = gapped(20, 18, 4, seed=8)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_factors(
            *(torch.from_numpy(x) for x in (b, a, b2, a2)), scale_a=1, scale_b=1, top_k=2
        )


# --- whole adapters ---------------------------------------------------------------------------
def _adapter(tmp_path: Path, name: str, layers: list[FakeLayer], **config: object) -> Path:
    return write_peft(tmp_path / name, FakeAdapter(layers, dict(config)))


def test_compare_adapters_against_dense(tmp_path: Path) -> None:
    """Different ranks and alphas, an embedding, a layer only in A, one only in B."""
    gen = torch.Generator().manual_seed(0)
    a_layers = [
        FakeLayer(
            "m.layers.0.q",
            *planted_factors(out=24, inp=16, rank=8, spectrum=np.array([4.0, 2, 1]), seed=1),
        ),
        FakeLayer(
            "m.layers.0.v", torch.randn(24, 8, generator=gen), torch.randn(8, 16, generator=gen)
        ),
        FakeLayer(
            "m.embed",
            torch.randn(12, 8, generator=gen),
            torch.randn(8, 30, generator=gen),
            embedding=True,
        ),
        FakeLayer("m.only_a", torch.randn(10, 8, generator=gen), torch.randn(8, 10, generator=gen)),
    ]
    b_layers = [
        FakeLayer(
            "m.layers.0.q",
            *planted_factors(out=24, inp=16, rank=4, spectrum=np.array([4.0, 1.5]), seed=1),
        ),
        FakeLayer(
            "m.layers.0.v", torch.randn(24, 4, generator=gen), torch.randn(4, 16, generator=gen)
        ),
        FakeLayer(
            "m.embed",
            torch.randn(12, 4, generator=gen),
            torch.randn(4, 30, generator=gen),
            embedding=True,
        ),
        FakeLayer("m.only_b", torch.randn(10, 4, generator=gen), torch.randn(4, 10, generator=gen)),
    ]
    path_a = _adapter(tmp_path, "a", a_layers, lora_alpha=16)
    path_b = _adapter(tmp_path, "b", b_layers, lora_alpha=4)
    report = compare_adapters(load_adapter(path_a), load_adapter(path_b), top_k=3)
    assert sorted(x.name for x in report.layers) == ["m.embed", "m.layers.0.q", "m.layers.0.v"]
    assert report.summary.only_in_a == ("m.only_a",) and report.summary.only_in_b == ("m.only_b",)
    fake_a = {x.name: x for x in a_layers}
    fake_b = {x.name: x for x in b_layers}
    total = {"a": 0.0, "d": 0.0}
    for layer in report.layers:
        fa, fb = fake_a[layer.name], fake_b[layer.name]
        ref = dense_reference(
            fa.b.numpy(), fa.a.numpy(), 2.0, fb.b.numpy(), fb.a.numpy(), 1.0, layer.k
        )
        assert (layer.rank_a, layer.rank_b) == (8, 4)
        assert layer.relative_difference == pytest.approx(ref["diff"] / ref["norm_a"], rel=1e-9)
        assert layer.cosine == pytest.approx(ref["cos"], abs=1e-9)
        np.testing.assert_allclose(np.radians(layer.left_angles), ref["left"], atol=1e-6)
        np.testing.assert_allclose(np.radians(layer.right_angles), ref["right"], atol=1e-6)
        total["a"] += ref["norm_a"] ** 2
        total["d"] += ref["diff"] ** 2
    assert report.summary.relative_difference == pytest.approx(math.sqrt(total["d"] / total["a"]))
    q = next(x for x in report.layers if x.name == "m.layers.0.q")
    assert q.k == 2, "B's q has rank 2: only two directions can be compared"


def test_shape_mismatch_is_listed_not_compared(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    path_a = _adapter(
        tmp_path,
        "a",
        [FakeLayer("x", torch.randn(8, 2, generator=gen), torch.randn(2, 6, generator=gen))],
    )
    path_b = _adapter(
        tmp_path,
        "b",
        [FakeLayer("x", torch.randn(8, 2, generator=gen), torch.randn(2, 7, generator=gen))],
    )
    warnings: list[str] = []
    report = compare_adapters(
        load_adapter(path_a), load_adapter(path_b), top_k=2, warn=warnings.append
    )
    assert report.layers == ()
    assert [(m.name, m.shape_a, m.shape_b) for m in report.mismatched] == [("x", (8, 6), (8, 7))]
    assert warnings and "differ in shape" in warnings[0]


def test_kohya_and_diffusers_names_match_after_normalising() -> None:
    assert normalise_name("lora_unet_down_blocks_0_attentions_0_proj_in") == normalise_name(
        "unet.down_blocks.0.attentions.0.proj_in"
    )
    assert normalise_name("lora_te_text_model_encoder_layers_0_mlp_fc1") == normalise_name(
        "text_encoder.text_model.encoder.layers.0.mlp.fc1"
    )
    assert normalise_name("unet.mid.attn1.processor.to_q") == normalise_name(
        "lora_unet_mid_attn1_to_q"
    )


def test_structured_formats_compare_with_themselves() -> None:
    """Every SD sample (LoCon, Tucker, LoHa, LoKr, diffusers) against itself: difference 0."""
    for path in sorted((SAMPLES / "sd").glob("*.safetensors")):
        adapter = load_adapter(path)
        report = compare_adapters(adapter, load_adapter(path), top_k=2)
        assert len(report.layers) == len(adapter.layers), path.name
        for layer in report.layers:
            if layer.norm_a > 0:
                assert layer.relative_difference is not None
                assert layer.relative_difference < 1e-12, (path.name, layer.name)
                assert layer.cosine == pytest.approx(1.0, abs=1e-12)
                assert layer.left_overlap == pytest.approx(1.0, abs=1e-9)


def test_pair_layers_pairs_in_a_order() -> None:
    a = load_adapter(SAMPLES / "sd" / "kohya-lora.safetensors")
    matching = pair_layers(a.layers, tuple(reversed(a.layers)))
    assert [x.name for x, _ in matching.pairs] == [x.name for x in a.layers]
    assert all(x is y for x, y in matching.pairs)


@pytest.mark.parametrize("angle", [1e-9, 1e-4, 0.3, 1.2, math.pi / 2])
def test_principal_angles_are_accurate_at_both_ends(angle: float) -> None:
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((20, 4)))
    x = q[:, :2]
    y = np.stack([q[:, 0], math.cos(angle) * q[:, 1] + math.sin(angle) * q[:, 2]], axis=1)
    got = principal_angles(x, y)
    want = scipy.linalg.subspace_angles(x, y)[::-1]
    assert np.allclose(got, want, rtol=1e-9, atol=1e-15)
    assert got[1] == pytest.approx(angle, rel=1e-9)
