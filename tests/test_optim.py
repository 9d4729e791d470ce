import torch

from ldm.optim import adam


def test_fused_adam_matches_reference_update():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    opt_a = adam(a + [frozen], lr=1e-2, betas=(0.5, 0.9))
    opt_b = torch.optim.Adam(b, lr=1e-2, betas=(0.5, 0.9), foreach=False)
    assert opt_a.defaults.get("fused") is True
    assert sum(len(g["params"]) for g in opt_a.param_groups) == 2  # frozen parameters are left out
    for _ in range(3):
        for p, q in zip(a, b):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adamw_variant():
    p = torch.nn.Parameter(torch.ones(2))
    assert isinstance(adam([p], lr=1e-3, weight_decay=0.01, decoupled_weight_decay=True), torch.optim.AdamW)
