"""The lookup benchmark helper runs on tiny sizes and reports consistent numbers (no timing assertions)."""
from ldm.modules.vqvae.benchmark import benchmark_lookup


def test_benchmark_lookup_small():
    result = benchmark_lookup(n_e=512, e_dim=4, batch=1, height=8, width=8, chunk_size=16, repeats=1)
    assert result["n_vectors"] == 64 and result["chunk_rows"] == 16
    assert result["naive_block_bytes"] == 64 * 512 * 4 and result["chunked_block_bytes"] == 16 * 512 * 4
    assert result["exact_same_indices"] and result["matmul_same_indices"]
    for key in ("naive_time_s", "exact_time_s", "matmul_time_s"):
        assert result[key] > 0
    if result["naive_peak_bytes"] is not None and result["exact_peak_bytes"] is not None:
        assert result["exact_peak_bytes"] < result["naive_peak_bytes"]
