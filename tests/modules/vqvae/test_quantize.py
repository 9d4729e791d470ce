"""VectorQuantizer: outputs, straight-through gradients, both loss conventions, cosine lookup, decoding, checkpoints."""
import pytest
import torch

from ldm.modules.vqvae import VectorQuantizer2
from ldm.modules.vqvae.quantize import VectorQuantizer
from ldm.util import instantiate_from_config


def make(n_e=8, e_dim=3, **kw):
    q = VectorQuantizer(n_e, e_dim, **kw)
    q.init_codebook_(torch.randn(n_e, e_dim))
    return q


def nearest(z, codes):
    """Reference: brute-force nearest code per NCHW position, returned as (indices (B,H,W), quantized NCHW)."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    idx = torch.cdist(flat.double(), codes.double()).argmin(1)
    zq = codes[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    return idx.view(z.shape[0], z.shape[2], z.shape[3]), zq


def test_alias_state_dict_and_init():
    assert VectorQuantizer2 is VectorQuantizer
    q = VectorQuantizer(16, 4)
    assert list(q.state_dict()) == ["embedding.weight"]  # exactly the original's keys
    assert q.embedding.weight.abs().max() <= 1 / 16 and q.beta == 0.25 and q.legacy
    built = instantiate_from_config({"target": "ldm.modules.vqvae.quantize.VectorQuantizer2",
                                     "params": {"n_e": 32, "e_dim": 4, "beta": 0.25}})
    assert isinstance(built, VectorQuantizer) and built.embedding.weight.shape == (32, 4)


def test_forward_outputs_match_brute_force():
    q = make().eval()
    z = torch.randn(2, 3, 5, 4)
    z_q, loss, (perplexity, min_encodings, idx) = q(z)
    ref_idx, ref_zq = nearest(z, q.embedding.weight.detach())
    assert z_q.shape == z.shape and min_encodings is None
    assert idx.shape == (2 * 5 * 4,) and torch.equal(idx, ref_idx.reshape(-1))
    assert torch.allclose(z_q, ref_zq.float(), atol=1e-6)
    assert torch.equal(q.lookup(z.permute(0, 2, 3, 1).reshape(-1, 3)), idx)
    counts = torch.bincount(idx, minlength=8).float() / idx.numel()
    expected = torch.exp(-(counts * torch.log(counts + 1e-10)).sum())
    assert torch.allclose(perplexity, expected)
    assert torch.allclose(q.codebook_stats()["perplexity"], expected)


def test_sane_index_shape():
    q = make(sane_index_shape=True)
    _, _, (_, _, idx) = q(torch.randn(2, 3, 5, 4))
    assert idx.shape == (2, 5, 4) and idx.dtype == torch.long


def test_straight_through_gradient_reaches_input():
    q = make()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    z_q, _, _ = q(z)
    weights = torch.randn_like(z_q)
    (z_q * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # identity Jacobian through the quantizer


@pytest.mark.parametrize("legacy", [True, False])
def test_loss_matches_hand_computation(legacy):
    beta = 0.3
    q = make(beta=beta, legacy=legacy)
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    _, loss, _ = q(z)
    _, zq = nearest(z.detach(), q.embedding.weight.detach())
    mse = ((zq.float() - z.detach()) ** 2).mean()
    # value: both terms share the same forward value, so loss = (1 + beta) * mse either way
    assert torch.allclose(loss, (1 + beta) * mse, rtol=1e-5)
    # gradients tell the terms apart: d/dz of the commitment term ||sg(e) - z||^2, d/de of the codebook term
    loss.backward()
    commit_weight = 1.0 if legacy else beta
    codebook_weight = beta if legacy else 1.0
    grad_z = commit_weight * 2 * (z.detach() - zq.float()) / z.numel()
    assert torch.allclose(z.grad, grad_z, atol=1e-6)
    flat_z = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    idx = nearest(z.detach(), q.embedding.weight.detach())[0].reshape(-1)
    grad_e = torch.zeros(8, 3).index_add_(0, idx, codebook_weight * 2 * (q.embedding.weight.detach()[idx] - flat_z)
                                          / z.numel())
    assert torch.allclose(q.embedding.weight.grad, grad_e, atol=1e-6)


def test_ema_loss_is_commitment_only():
    q = make(use_ema=True, beta=0.3, legacy=False)
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    _, zq = nearest(z.detach(), q.embedding.weight.detach())  # codes before the EMA step of this forward
    _, loss, _ = q(z)
    assert torch.allclose(loss, 0.3 * ((zq.float() - z.detach()) ** 2).mean(), rtol=1e-5)
    loss.backward()
    assert not q.embedding.weight.requires_grad and q.embedding.weight.grad is None


def test_l2_normalized_lookup_is_cosine():
    q = VectorQuantizer(2, 2, l2_normalize=True).eval()
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[10.0, 0.0], [0.1, 0.1]]))
    z = torch.tensor([[0.2, 0.19]]).view(1, 2, 1, 1)  # both lookups: code 1
    z2 = torch.tensor([[0.3, 0.01]]).view(1, 2, 1, 1)  # Euclidean-nearest: code 1; cosine-nearest: code 0
    assert int(q(z)[2][2]) == 1 and int(q(z2)[2][2]) == 0
    euclid = VectorQuantizer(2, 2).eval()
    euclid.load_state_dict(q.state_dict())
    assert int(euclid(z2)[2][2]) == 1  # the plain lookup disagrees: the cosine path is really used
    z_q = q(torch.randn(2, 2, 3, 3))[0]
    assert torch.allclose(z_q.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)
    assert torch.allclose(q.get_codebook_entry(torch.tensor([0, 1])).norm(dim=1), torch.ones(2), atol=1e-6)


def test_l2_normalized_gradients_flow_to_codes_and_input():
    q = make(l2_normalize=True, restart_dead_codes=True, usage_window=1, dead_code_threshold=100.0)
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    z_q, loss, _ = q(z)  # the restart rewrites codes in place after the forward: backward must still work
    (z_q.sum() + loss).backward()
    assert z.grad is not None and q.embedding.weight.grad is not None


def test_get_codebook_entry_and_embed_code_match_forward():
    q = make(sane_index_shape=True)
    z = torch.randn(2, 3, 5, 4)
    z_q, _, (_, _, idx) = q(z)
    assert torch.allclose(q.get_codebook_entry(idx.reshape(-1), (2, 5, 4, 3)), z_q, atol=1e-6)
    assert torch.allclose(q.embed_code(idx), z_q, atol=1e-6)
    assert q.get_codebook_entry(idx.reshape(-1), None).shape == (40, 3)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        q.get_codebook_entry(idx.reshape(-1), (2, 5, 4, 2))


def test_chunked_module_lookup_equals_unchunked():
    q = VectorQuantizer(16384, 4).eval()  # original uniform init: a dense, tie-prone codebook
    z = torch.randn(2, 4, 8, 8)
    full = VectorQuantizer(16384, 4, chunk_size=10**6).eval()
    full.load_state_dict(q.state_dict())
    small = VectorQuantizer(16384, 4, chunk_size=5).eval()
    small.load_state_dict(q.state_dict())
    assert torch.equal(full(z)[2][2], small(z)[2][2])


def test_bf16_input_keeps_dtype():
    q = make()
    z = torch.randn(1, 3, 4, 4).to(torch.bfloat16)
    z_q, loss, (_, _, idx) = q(z)
    assert z_q.dtype == torch.bfloat16
    assert torch.equal(idx, nearest(z.float(), q.embedding.weight.detach())[0].reshape(-1))


def test_bad_input_errors():
    q = make()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        q(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="n_e"):
        VectorQuantizer(0, 4)
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantizer(4, 4, ema_decay=1.0)
    with pytest.raises(ValueError, match="hard quantizer"):
        q(torch.randn(1, 3, 2, 2), return_logits=True)


def test_original_checkpoint_loads_into_feature_quantizers():
    original = make(n_e=8, e_dim=3)
    sd = {"embedding.weight": original.embedding.weight.detach().clone()}
    q = VectorQuantizer(8, 3, use_ema=True, restart_dead_codes=True)
    q.load_state_dict(sd, strict=True)
    assert torch.equal(q.embedding.weight, sd["embedding.weight"])
    assert torch.equal(q.ema_embed_sum, sd["embedding.weight"]) and torch.equal(q.ema_cluster_size, torch.ones(8))
    saved = q.state_dict()
    assert {"ema_cluster_size", "ema_embed_sum", "usage_history", "usage_count", "batches_seen",
            "last_restart"} <= set(saved)
    plain = VectorQuantizer(8, 3)
    plain.load_state_dict(saved, strict=True)  # buffers of features that are off are ignored
    assert torch.equal(plain.embedding.weight, sd["embedding.weight"])
