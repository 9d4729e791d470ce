"""Codebook maintenance: EMA updates, usage statistics, dead-code restarts, and agreement across DDP ranks."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ldm.modules.vqvae.codebook import dead_code_mask, ema_codebook_update_, record_usage_
from ldm.modules.vqvae.quantize import VectorQuantizer


def batch_near(codes, idx, noise=0.01):
    """NCHW batch (1, D, 1, len(idx)) of vectors next to the given codes."""
    vecs = codes[idx] + noise * torch.randn(len(idx), codes.shape[1])
    return vecs.t().reshape(1, codes.shape[1], 1, len(idx))


def test_ema_step_matches_hand_computation():
    q = VectorQuantizer(3, 2, use_ema=True, ema_decay=0.9, ema_eps=1e-5)
    codes = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    q.init_codebook_(codes)
    z = torch.tensor([[0.5, 0.0], [0.0, 0.5], [4.0, 4.0]]).t().reshape(1, 2, 1, 3)
    q.train()(z)
    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[0.5, 0.5], [4.0, 4.0], [0.0, 0.0]])
    size = 0.9 * torch.ones(3) + 0.1 * counts
    embed = 0.9 * codes + 0.1 * sums
    total = size.sum()
    smoothed = (size + 1e-5) / (total + 3e-5) * total
    assert torch.allclose(q.ema_cluster_size, size) and torch.allclose(q.ema_embed_sum, embed)
    assert torch.allclose(q.embedding.weight, embed / smoothed[:, None], atol=1e-6)


def test_ema_moves_codes_toward_assigned_vectors_and_only_in_training():
    q = VectorQuantizer(4, 2, use_ema=True, ema_decay=0.8)
    q.init_codebook_(torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]]))
    targets = torch.tensor([[1.0, 1.0], [3.0, 0.5], [0.5, 3.0], [3.0, 3.0]])
    start = (q.embedding.weight - targets).norm(dim=1)
    frozen = q.embedding.weight.clone()
    q.eval()(batch_near(targets, torch.arange(4).repeat(8)))
    assert torch.equal(q.embedding.weight, frozen)  # no update outside training
    q.train()
    for _ in range(30):
        q(batch_near(targets, torch.arange(4).repeat(8)))
    end = (q.embedding.weight - targets).norm(dim=1)
    assert (end < 0.1 * start).all()


def test_usage_ring_buffer_and_stats():
    history = torch.zeros(2, 3, dtype=torch.int32)
    usage, seen = torch.zeros(3, dtype=torch.int32), torch.zeros((), dtype=torch.long)
    for counts in ([1, 0, 0], [0, 2, 0], [0, 0, 5]):
        record_usage_(history, usage, seen, torch.tensor(counts, dtype=torch.float32))
    assert usage.tolist() == [0, 2, 5] and int(seen) == 3  # the first batch left the 2-batch window
    assert dead_code_mask(usage, 1.0).tolist() == [True, False, False]

    q = VectorQuantizer(4, 2, usage_window=3)
    q.init_codebook_(torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]]))
    q.train()
    for _ in range(2):
        q(batch_near(q.embedding.weight.detach(), torch.tensor([0, 0, 0, 1])))
    stats = q.codebook_stats()
    assert set(stats) == {"perplexity", "window_perplexity", "usage_fraction", "dead_codes", "batches_tracked"}
    assert all(isinstance(v, torch.Tensor) for v in stats.values())
    assert float(stats["usage_fraction"]) == 0.5 and int(stats["dead_codes"]) == 2
    assert int(stats["batches_tracked"]) == 2
    p = torch.tensor([0.75, 0.25])
    assert torch.allclose(stats["window_perplexity"], torch.exp(-(p * p.log()).sum()), atol=1e-5)


@pytest.mark.parametrize("use_ema", [False, True])
def test_dead_codes_are_restarted_from_batch_vectors(use_ema):
    window = 3
    q = VectorQuantizer(6, 2, use_ema=use_ema, restart_dead_codes=True, usage_window=window,
                        dead_code_threshold=1.0)
    q.init_codebook_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0],
                                   [80.0, 80.0]]))
    q.train()
    far = q.embedding.weight[2:].clone()
    data = [batch_near(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1] * 8)) for _ in range(window)]
    for step in range(window - 1):  # before a full window is observed nothing is judged dead
        q(data[step])
        assert torch.allclose(q.embedding.weight[2:], far)  # EMA smoothing may move unused codes by rounding
    q(data[-1])
    restarted = q.embedding.weight[2:]
    batch_vectors = data[-1].reshape(2, -1).t()
    assert not torch.isclose(restarted, far).any()
    # every restarted code is one of the vectors of the batch (after the EMA step when it is on)
    assert torch.cdist(restarted, batch_vectors).min(dim=1).values.max() < 1e-5
    assert torch.equal(q.last_restart[2:], torch.full((4,), window))
    assert int(q.usage_count[2:].sum()) == 0
    if use_ema:
        assert torch.equal(q.ema_cluster_size[2:], torch.ones(4))
    q(batch_near(torch.tensor([[0.0, 0.0]]), torch.zeros(8, dtype=torch.long)))
    assert torch.equal(q.last_restart[2:], torch.full((4,), window))  # a fresh window of grace: no second restart


def test_ema_update_helper_is_in_place():
    weight, size, embed = torch.zeros(2, 1), torch.ones(2), torch.tensor([[1.0], [2.0]])
    ema_codebook_update_(weight, size, embed, torch.tensor([1.0, 0.0]), torch.tensor([[3.0], [0.0]]), 0.5, 0.0)
    assert torch.allclose(size, torch.tensor([1.0, 0.5])) and torch.allclose(embed, torch.tensor([[2.0], [1.0]]))
    assert torch.allclose(weight, torch.tensor([[2.0], [2.0]]))


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    from ldm.modules.vqvae.quantize import VectorQuantizer

    def build(restart):
        torch.manual_seed(0)
        q = VectorQuantizer(16, 3, use_ema=True, ema_decay=0.9, restart_dead_codes=restart, usage_window=2)
        q.init_codebook_(torch.randn(16, 3))
        return q.train()

    def data(step, rank):
        g = torch.Generator().manual_seed(100 * step + rank)
        return torch.randn(2, 3, 4, 4, generator=g) * 0.5

    def worker(rank, path):
        dist.init_process_group("gloo", init_method="file://" + path, rank=rank, world_size=2)
        ema, both = build(False), build(True)
        torch.manual_seed(rank)  # different random streams: restart candidates must come from rank 0
        for step in range(4):
            ema(data(step, rank)); both(data(step, rank))
        for name, q in (("ema", ema), ("restart", both)):
            gathered = [torch.zeros(16, 3) for _ in range(2)]
            dist.all_gather(gathered, q.embedding.weight.detach().contiguous())
            if rank == 0:
                print(name, "ranks_equal", torch.equal(gathered[0], gathered[1]))
        dist.destroy_process_group()
        if rank == 0:  # reference after leaving the group: a single process that sees both ranks' batches
            ref = build(False)
            for step in range(4):
                ref(torch.cat([data(step, 0), data(step, 1)]))
            print("ema matches_single_process", torch.allclose(ref.embedding.weight, ema.embedding.weight,
                                                              atol=1e-6))
            print("restart restarted_some", int((both.last_restart > 0).sum()) > 0)

    if __name__ == "__main__":
        mp.spawn(worker, args=(sys.argv[1],), nprocs=2)
""")


@pytest.mark.slow
def test_ema_and_restarts_agree_across_ddp_ranks(tmp_path):
    script = tmp_path / "ddp_vq.py"
    script.write_text(DDP_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "rendezvous")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "ema ranks_equal True" in out and "restart ranks_equal True" in out, out
    assert "ema matches_single_process True" in out, out
    assert "restart restarted_some True" in out, out
