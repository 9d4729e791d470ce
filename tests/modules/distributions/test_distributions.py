import torch
from torch.distributions import Normal, kl_divergence

from ldm.modules.distributions.distributions import DiagonalGaussianDistribution


def test_kl_matches_torch_distributions():
    params = torch.randn(3, 8, 5, 5)
    post = DiagonalGaussianDistribution(params)
    mean, logvar = params.chunk(2, dim=1)
    ref = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(post.kl(), ref, rtol=1e-5, atol=1e-5)


def test_kl_between_two_posteriors_matches_torch():
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    pa, pb = DiagonalGaussianDistribution(a), DiagonalGaussianDistribution(b)
    ref = kl_divergence(Normal(pa.mean, pa.std), Normal(pb.mean, pb.std)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(pa.kl(pb), ref, rtol=1e-5, atol=1e-5)


def test_nll_matches_torch_and_mode_is_mean():
    params = torch.randn(2, 6, 4, 4)
    post = DiagonalGaussianDistribution(params)
    x = torch.randn(2, 3, 4, 4)
    ref = -Normal(post.mean, post.std).log_prob(x).sum(dim=(1, 2, 3))
    torch.testing.assert_close(post.nll(x), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(post.mode(), post.mean)


def test_logvar_is_clamped_and_sample_statistics():
    mean = torch.full((1, 1, 64, 64), 2.0)
    logvar = torch.full((1, 1, 64, 64), 100.0)
    post = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1))
    assert post.logvar.max().item() == 20.0
    post = DiagonalGaussianDistribution(torch.cat([mean, torch.full_like(mean, -2.0)], 1))
    s = post.sample(generator=torch.Generator().manual_seed(0))
    assert abs(s.mean().item() - 2.0) < 0.05
    assert abs(s.std().item() - torch.exp(torch.tensor(-1.0)).item()) < 0.05


def test_deterministic_posterior_has_zero_kl_and_returns_mean():
    post = DiagonalGaussianDistribution(torch.randn(2, 4, 3, 3), deterministic=True)
    assert torch.equal(post.kl(), torch.zeros(2))
    assert torch.equal(post.sample(), post.mean)


def test_kl_is_float32_under_bf16_parameters():
    params = torch.randn(2, 8, 16, 16).to(torch.bfloat16)
    post = DiagonalGaussianDistribution(params)
    assert post.kl().dtype == torch.float32
    ref = DiagonalGaussianDistribution(params.float()).kl()
    torch.testing.assert_close(post.kl(), ref, rtol=1e-2, atol=1e-2)
