"""Tests for rope.apply_rotary_emb: the upstream reference, an independent formulation with
explicit block-diagonal rotation matrices, dtypes, GQA head counts, and the two properties
that make RoPE work: rotations keep norms, and q_m . k_n depends only on m - n."""

import pytest
import torch

from rope import apply_rotary_emb


def rotation_matrices(seq_len: int, head_dim: int, theta: float) -> torch.Tensor:
    """(seq_len, head_dim, head_dim) float64: at position p, a block-diagonal matrix whose
    i-th 2x2 block [[cos a, -sin a], [sin a, cos a]] rotates the pair (x[2i], x[2i+1]) by
    a = p * theta**(-2i/head_dim) (RoFormer, Su et al. 2021, Eq. 15)."""
    matrices = torch.zeros(seq_len, head_dim, head_dim, dtype=torch.float64)
    for p in range(seq_len):
        for i in range(head_dim // 2):
            angle = torch.tensor(p * theta ** (-2 * i / head_dim), dtype=torch.float64)
            c, s = torch.cos(angle), torch.sin(angle)
            matrices[p, 2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    return matrices


def rotate_by_matrices(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, T, heads, head_dim) -> each vector at position t multiplied by R_t, in float64."""
    matrices = rotation_matrices(x.shape[1], x.shape[-1], theta)
    return torch.einsum("tij,bthj->bthi", matrices, x.double())


def test_matches_upstream_reference(asset):
    reference = asset("rotary_embedding_actual.data", "reference/rotary_embedding_actual.data")
    expected_query, expected_key = torch.load(reference, weights_only=True)
    query, key = apply_rotary_emb(2 * torch.ones(1, 2, 2, 4), 3 * torch.ones(1, 2, 2, 4), 4, 20)
    torch.testing.assert_close(query, expected_query)
    torch.testing.assert_close(key, expected_key)


# (batch, seq_len, n_heads, n_kv_heads, head_dim): multi-head, grouped-query and multi-query.
SHAPES = [(1, 1, 1, 1, 2), (2, 5, 4, 4, 8), (2, 7, 8, 2, 64), (3, 16, 6, 1, 16), (1, 40, 2, 1, 128)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("theta", [10000.0, 100000.0])
def test_matches_rotation_matrices(shape, theta):
    batch, seq_len, n_heads, n_kv_heads, head_dim = shape
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(batch, seq_len, n_heads, head_dim, generator=generator)
    key = torch.randn(batch, seq_len, n_kv_heads, head_dim, generator=generator)
    rotated_query, rotated_key = apply_rotary_emb(query, key, head_dim, max_seq_len=64, theta=theta)
    assert rotated_query.shape == query.shape and rotated_key.shape == key.shape
    # float32 angles of up to 40 radians carry an absolute error of a few 1e-6
    torch.testing.assert_close(rotated_query.double(), rotate_by_matrices(query, theta), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rotated_key.double(), rotate_by_matrices(key, theta), atol=2e-5, rtol=1e-5)


def test_theta_matters():
    query = torch.randn(1, 8, 2, 16)
    with_1e4, _ = apply_rotary_emb(query, query, 16, 32, theta=1e4)
    with_1e5, _ = apply_rotary_emb(query, query, 16, 32, theta=1e5)
    assert not torch.allclose(with_1e4, with_1e5)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_dtype_preserved(dtype, atol):
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 9, 4, 32, generator=generator).to(dtype)
    key = torch.randn(2, 9, 2, 32, generator=generator).to(dtype)
    rotated_query, rotated_key = apply_rotary_emb(query, key, 32, 16)
    assert rotated_query.dtype == dtype and rotated_key.dtype == dtype
    # Rounded once to dtype at the end, not at every intermediate step.
    torch.testing.assert_close(rotated_query.double(), rotate_by_matrices(query, 1e4), atol=atol, rtol=atol)
    torch.testing.assert_close(rotated_key.double(), rotate_by_matrices(key, 1e4), atol=atol, rtol=atol)


def test_position_zero_is_unrotated_and_norms_are_preserved():
    query, key = torch.randn(2, 12, 4, 16), torch.randn(2, 12, 2, 16)
    rotated_query, rotated_key = apply_rotary_emb(query, key, 16, 32)
    torch.testing.assert_close(rotated_query[:, 0], query[:, 0])
    torch.testing.assert_close(rotated_query.norm(dim=-1), query.norm(dim=-1))
    torch.testing.assert_close(rotated_key.norm(dim=-1), key.norm(dim=-1))
    # ...and every pair keeps its own norm: rotations act within pairs, never across them.
    torch.testing.assert_close(rotated_query.unflatten(-1, (-1, 2)).norm(dim=-1),
                               query.unflatten(-1, (-1, 2)).norm(dim=-1))


def test_scores_depend_only_on_relative_position():
    # The same query and key vector at every position: after rotation, q_m . k_n must be a
    # function of m - n alone, i.e. constant along every diagonal of the score matrix.
    seq_len, head_dim = 24, 32
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    query = q.expand(1, seq_len, 1, head_dim).contiguous()
    key = k.expand(1, seq_len, 1, head_dim).contiguous()
    rotated_query, rotated_key = apply_rotary_emb(query, key, head_dim, seq_len)
    scores = rotated_query[0, :, 0] @ rotated_key[0, :, 0].T  # (m, n)
    for offset in range(-seq_len + 1, seq_len):
        diagonal = torch.diagonal(scores, offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores[0, 0], scores[0, 1])  # ...yet position does matter


def test_explicit_positions():
    # Positions p..p+T-1 given explicitly equal the tail of a longer sequence (a KV cache's
    # new tokens); a (B, T) tensor gives every row its own positions (left padding).
    query, key = torch.randn(2, 10, 4, 8), torch.randn(2, 10, 2, 8)
    full_query, full_key = apply_rotary_emb(query, key, 8, 16)
    tail_query, tail_key = apply_rotary_emb(query[:, 6:], key[:, 6:], 8, 16, positions=torch.arange(6, 10))
    torch.testing.assert_close(tail_query, full_query[:, 6:])
    torch.testing.assert_close(tail_key, full_key[:, 6:])
    # Row 0 holds tokens 0..2 of its sequence, row 1 tokens 3..5 of its own.
    per_row = torch.tensor([[0, 1, 2], [3, 4, 5]])
    rows_query, rows_key = apply_rotary_emb(torch.stack([query[0, :3], query[1, 3:6]]),
                                            torch.stack([key[0, :3], key[1, 3:6]]), 8, 16, positions=per_row)
    torch.testing.assert_close(rows_query, torch.stack([full_query[0, :3], full_query[1, 3:6]]))
    torch.testing.assert_close(rows_key, torch.stack([full_key[0, :3], full_key[1, 3:6]]))


def test_sequence_longer_than_max_seq_len_is_an_error():
    with pytest.raises(ValueError, match="max_seq_len"):
        apply_rotary_emb(torch.randn(1, 21, 2, 4), torch.randn(1, 21, 2, 4), 4, 20)


def test_gradients_are_rotated_back():
    # A rotation's Jacobian is the rotation itself, so the gradient reaching the input is the
    # incoming gradient rotated back: it flows to both inputs and keeps its norm.
    query = torch.randn(1, 5, 2, 8, requires_grad=True)
    key = torch.randn(1, 5, 1, 8, requires_grad=True)
    rotated_query, rotated_key = apply_rotary_emb(query, key, 8, 16)
    incoming_query, incoming_key = torch.randn_like(rotated_query), torch.randn_like(rotated_key)
    query_grad, key_grad = torch.autograd.grad((rotated_query, rotated_key), (query, key),
                                               (incoming_query, incoming_key))
    torch.testing.assert_close(query_grad.norm(dim=-1), incoming_query.norm(dim=-1))
    torch.testing.assert_close(key_grad.norm(dim=-1), incoming_key.norm(dim=-1))
    assert not torch.allclose(query_grad[:, 1:], incoming_query[:, 1:])
