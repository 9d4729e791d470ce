"""Chunked nearest-code search: bit-exact equality with the full-matrix argmin, ties, dtypes, counts, perplexity."""
import pytest
import torch

from ldm.modules.vqvae.benchmark import naive_nearest_code
from ldm.modules.vqvae.lookup import (auto_chunk_size, code_counts, nearest_code, pairwise_sq_distances,
                                      perplexity_from_counts, resolve_method)


def brute_force(z, codes):
    """torch.argmin over the full (N x n_e) matrix built with the same formula."""
    return pairwise_sq_distances(z, codes).argmin(dim=1)


@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 127, 10_000, None])
def test_chunked_equals_brute_force_large_codebook(chunk):
    n_e, e_dim = 16384, 4
    z = torch.randn(2 * 8 * 8 + 1, e_dim)
    # the original initialisation: all codes within 1/n_e of zero, so many distances differ by a few ulps
    tiny = torch.empty(n_e, e_dim).uniform_(-1.0 / n_e, 1.0 / n_e)
    spread = torch.randn(n_e, e_dim)
    for codes in (tiny, spread):
        assert torch.equal(nearest_code(z, codes, chunk_size=chunk), brute_force(z, codes))


@pytest.mark.parametrize("n_e", [15, 17, 1000])
def test_distance_entries_do_not_depend_on_chunk_shape(n_e):
    z, codes = torch.randn(259, 8), torch.randn(n_e, 8)
    full = pairwise_sq_distances(z, codes)
    for rows in (1, 2, 3, 8, 100, 258):
        parts = torch.cat([pairwise_sq_distances(z[s:s + rows], codes) for s in range(0, 259, rows)])
        assert torch.equal(parts, full)


def test_budget_derived_chunks_equal_brute_force():
    z, codes = torch.randn(300, 3), torch.randn(16384, 3)
    # budget of 5 rows of 16384 fp32 distances: many chunks and a ragged last one
    assert torch.equal(nearest_code(z, codes, budget_bytes=16384 * 4 * 5), brute_force(z, codes))


def test_ties_pick_first_index_like_argmin():
    codes = torch.randn(5, 4).repeat(3, 1)  # rows i, i+5, i+10 are equal: exact ties
    z = torch.randn(50, 4)
    for chunk in (1, 3, None):
        got = nearest_code(z, codes, chunk_size=chunk)
        assert torch.equal(got, brute_force(z, codes))
        assert int(got.max()) < 5  # first of the tied codes


def test_matches_original_formula_on_separated_codes():
    codes = torch.randn(512, 8) * 3
    z = codes[torch.randint(0, 512, (200,))] + 0.01 * torch.randn(200, 8)
    for method in ("exact", "matmul"):
        assert torch.equal(nearest_code(z, codes, chunk_size=33, method=method), naive_nearest_code(z, codes))


def test_method_selection_and_wide_codes():
    assert resolve_method("auto", 4) == "exact" and resolve_method("auto", 256) == "matmul"
    with pytest.raises(ValueError, match="lookup method"):
        resolve_method("fast", 4)
    codes = torch.randn(300, 64)
    z = codes[torch.randint(0, 300, (90,))] + 0.05 * torch.randn(90, 64)
    assert torch.equal(nearest_code(z, codes, chunk_size=16), naive_nearest_code(z, codes))


def test_half_precision_inputs_search_in_float32():
    codes = torch.randn(64, 4)
    z = torch.randn(100, 4).to(torch.bfloat16)
    assert torch.equal(nearest_code(z, codes, chunk_size=16), brute_force(z.float(), codes))


def test_auto_chunk_size_and_errors():
    assert auto_chunk_size(16384, torch.float32, 128 * 2**20) == 2048
    assert auto_chunk_size(10**9, torch.float32, 1) == 1
    with pytest.raises(ValueError, match="chunk_size"):
        nearest_code(torch.randn(4, 2), torch.randn(3, 2), chunk_size=0)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nearest_code(torch.randn(4, 2), torch.randn(3, 5))


def test_counts_and_perplexity():
    idx = torch.tensor([0, 0, 1, 3])
    assert torch.equal(code_counts(idx, 5), torch.tensor([2.0, 1.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(perplexity_from_counts(torch.ones(8)), torch.tensor(8.0), atol=1e-4)
    assert torch.allclose(perplexity_from_counts(torch.tensor([5.0, 0.0, 0.0])), torch.tensor(1.0), atol=1e-4)
