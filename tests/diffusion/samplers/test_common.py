"""Behaviour every registered sampler shares: signature, parameterizations, masks, guidance, noise, callbacks, dtype."""
import inspect

import pytest
import torch

from ldm.diffusion.samplers import available_samplers, get_sampler

ALL = ["ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s", "dpmpp_3m", "euler", "euler_a", "heun", "plms", "unipc"]
STOCHASTIC = {"ddpm": {}, "euler_a": {}, "dpmpp_2m_sde": {}, "dpmpp_2s": {"eta": 1.0}, "ddim": {"eta": 1.0}}
DETERMINISTIC = ["ddim", "plms", "euler", "heun", "dpmpp_2m", "dpmpp_2s", "dpmpp_3m", "unipc"]
SHARED = ["model_fn", "schedule", "x_T", "steps", "cond", "uncond", "guidance_scale", "eta", "mask", "x0",
          "callback", "generator", "parameterization"]


def test_registry_lists_every_sampler():
    assert available_samplers() == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_shared_signature(name):
    params = list(inspect.signature(get_sampler(name)).parameters)
    assert params[:len(SHARED)] == SHARED


@pytest.mark.parametrize("name", ALL)
def test_eps_x0_v_models_give_the_same_samples(ldm_schedule, gaussian, unit_noise, name):
    x_T = unit_noise(256).view(16, 1, 4, 4)
    kw = STOCHASTIC.get(name, {})
    outs = [get_sampler(name)(gaussian(ldm_schedule, parameterization=p), ldm_schedule, x_T, 12, parameterization=p,
                              generator=torch.Generator().manual_seed(7), **kw) for p in ("eps", "x0", "v")]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_mask_keeps_known_region_exactly(ldm_schedule, gaussian, name):
    x0 = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, 10, mask=mask, x0=x0,
                            generator=torch.Generator().manual_seed(0), **STOCHASTIC.get(name, {}))
    assert torch.equal(out[:, :, :4], x0[:, :, :4])
    assert not torch.allclose(out[:, :, 4:], x0[:, :, 4:])
    # the unknown region still follows the model: samples of N(0.3, 1) there
    assert abs(out[:, :, 4:].mean().item() - 0.3) < 0.4


def _shifted_model(ldm_schedule, gaussian, calls):
    """Gaussian model whose output moves with the conditioning: out + 0.05 * cond (cond a (B,) tensor)."""
    base = gaussian(ldm_schedule)

    def model(x, t, cond):
        calls.append(x.shape[0])
        return base(x, t) + 0.05 * cond.view(-1, *([1] * (x.dim() - 1))).to(x)

    return model


@pytest.mark.parametrize("name", ALL)
def test_guidance_batches_cond_and_uncond(ldm_schedule, gaussian, name):
    calls = []
    model = _shifted_model(ldm_schedule, gaussian, calls)
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cond, uncond = torch.tensor([1.0, -1.0, 2.0]), torch.zeros(3)
    sampler = get_sampler(name)
    kw = {"generator": torch.Generator().manual_seed(3), **STOCHASTIC.get(name, {})}
    plain = sampler(model, ldm_schedule, x_T, 6, cond=cond, **kw)
    assert set(calls) == {3}
    calls.clear()
    kw["generator"] = torch.Generator().manual_seed(3)
    # scale 1 is the conditional model alone: one batch of B per call, uncond never used
    assert torch.equal(sampler(model, ldm_schedule, x_T, 6, cond=cond, uncond=uncond, guidance_scale=1.0, **kw), plain)
    assert set(calls) == {3}
    calls.clear()
    # the model is linear in cond, so uncond + w (cond - uncond) equals the model at w * cond
    kw["generator"] = torch.Generator().manual_seed(3)
    guided = sampler(model, ldm_schedule, x_T, 6, cond=cond, uncond=uncond, guidance_scale=4.0, **kw)
    assert set(calls) == {6}  # cond and uncond in one batch
    kw["generator"] = torch.Generator().manual_seed(3)
    torch.testing.assert_close(guided, sampler(model, ldm_schedule, x_T, 6, cond=4.0 * cond, **kw))
    assert not torch.allclose(guided, plain)


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_generator_makes_stochastic_samplers_reproducible(ldm_schedule, gaussian, name):
    run = lambda seed: get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, 10,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed), **STOCHASTIC[name])
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(5), run(5))
    assert (run(5) - run(6)).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_ignore_the_generator(ldm_schedule, gaussian, name):
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    a = get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, 10, generator=gen)
    assert torch.equal(a, get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, 10))
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(5).get_state())  # no draws


@pytest.mark.parametrize("name", ALL)
def test_callback_and_intermediates(ldm_schedule, gaussian, name):
    seen, inter = [], {}
    x_T = torch.randn(2, 1, 4, 4)
    out = get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, 10, intermediates=inter, log_every_t=3,
                            callback=lambda i, t, x, x0: seen.append((i, float(t), x, x0)),
                            generator=torch.Generator().manual_seed(0), **STOCHASTIC.get(name, {}))
    assert [s[0] for s in seen] == list(range(10))
    ts = [s[1] for s in seen]
    assert ts == sorted(ts, reverse=True) and ts[0] >= 900  # the model's timestep, noisiest first
    assert all(s[2].shape == s[3].shape == x_T.shape for s in seen)
    assert torch.equal(seen[-1][2], out)  # the last callback sees the returned sample (VP scale)
    assert inter["x_inter"][0] is x_T and torch.equal(inter["x_inter"][-1], out)
    assert len(inter["x_inter"]) == len(inter["pred_x0"]) == 1 + 4  # x_T, then remaining index 9, 6, 3, 0


class CountingCallback:
    """A callback that wants the planned number of steps (`set_total`) and records when it was told."""

    def __init__(self):
        self.events = []

    def set_total(self, total):
        self.events.append(("total", total))

    def __call__(self, i, t, x, x0):
        self.events.append(("step", i))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_samplers_announce_the_steps_they_run(ldm_schedule, gaussian, name, strength):
    callback = CountingCallback()
    x_T = torch.randn(2, 1, 4, 4)
    x_init = torch.randn(2, 1, 4, 4) if strength < 1 else None
    get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, 3, callback=callback, x_init=x_init,
                      strength=strength, generator=torch.Generator().manual_seed(0), **STOCHASTIC.get(name, {}))
    (kind, total), steps = callback.events[0], callback.events[1:]
    assert kind == "total" and steps == [("step", i) for i in range(total)]  # told once, before the first step
    if name == "ddim" and strength == 1.0:
        assert total == 4  # uniform spacing: range(0, 1000, 333) has 4 indices for steps=3, as the original


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_follows_x_T(ldm_schedule, gaussian, name, dtype):
    x_T = torch.randn(2, 1, 4, 4).to(dtype)
    out = get_sampler(name)(gaussian(ldm_schedule), ldm_schedule, x_T, 8, cond=torch.ones(2), uncond=torch.zeros(2),
                            guidance_scale=2.0, generator=torch.Generator().manual_seed(0), **STOCHASTIC.get(name, {}))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", ALL)
def test_sampling_loop_has_no_host_syncs(small_schedule, name):
    """Per-step scalars are Python floats / ints: the loop runs on the meta device, where a sync would raise."""
    x_T = torch.randn(2, 3, 4, 4, device="meta")
    mask, x0 = torch.ones(2, 1, 4, 4, device="meta"), torch.randn(2, 3, 4, 4, device="meta")
    opts = {} if name in ("ddim", "ddpm") else {"thresholding": "dynamic"}
    out = get_sampler(name)(lambda x, t, c: x * 0.5, small_schedule, x_T, 6, cond=torch.ones(2, device="meta"),
                            uncond=torch.zeros(2, device="meta"), guidance_scale=3.0, mask=mask, x0=x0,
                            parameterization="v", **STOCHASTIC.get(name, {}), **opts)
    assert out.device.type == "meta" and out.shape == x_T.shape


@pytest.mark.parametrize("name", ["plms", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_deterministic_samplers_reject_eta(small_schedule, name):
    with pytest.raises(ValueError, match="eta"):
        get_sampler(name)(lambda x, t, c: x, small_schedule, torch.randn(1, 1, 2, 2), 3, eta=0.5)


@pytest.mark.parametrize("name", ["euler", "euler_a", "heun", "dpmpp_2m", "dpmpp_2s", "dpmpp_3m", "dpmpp_2m_sde",
                                  "unipc"])
def test_unknown_option_is_named(small_schedule, name):
    with pytest.raises(TypeError, match="unexpected option.*'ddim_eta'"):
        get_sampler(name)(lambda x, t, c: x, small_schedule, torch.randn(1, 1, 2, 2), 3, ddim_eta=0.0)


@pytest.mark.parametrize("quantize", [False, True])
def test_sigma_samplers_pass_fractional_or_quantized_timesteps(ldm_schedule, gaussian, quantize):
    seen = []
    base = gaussian(ldm_schedule)

    def model(x, t, cond):
        seen.append(t)
        return base(x, t)

    get_sampler("euler")(model, ldm_schedule, torch.randn(2, 1, 2, 2), 7, quantize=quantize)
    if quantize:
        assert all(t.dtype == torch.long for t in seen)
    else:
        assert all(t.is_floating_point() for t in seen) and any((t != t.round()).any() for t in seen)
    assert seen[0][0].item() == pytest.approx(999.0)  # the Karras grid starts at the schedule's last sigma


@pytest.mark.parametrize("name", ALL)
def test_guidance_rescale_goes_through_the_shared_wrapper(ldm_schedule, gaussian, name):
    from ldm.diffusion.guidance import ClassifierFreeGuidance

    model = _shifted_model(ldm_schedule, gaussian, [])
    x_T = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cond, uncond = torch.tensor([1.0, -1.0, 2.0]), torch.zeros(3)
    kw = STOCHASTIC.get(name, {})
    out = get_sampler(name)(model, ldm_schedule, x_T, 6, cond=cond, uncond=uncond, guidance_scale=4.0,
                            guidance_rescale=0.7, generator=torch.Generator().manual_seed(3), **kw)
    wrapped = ClassifierFreeGuidance(model, uncond, 4.0, rescale=0.7)
    torch.testing.assert_close(out, get_sampler(name)(wrapped, ldm_schedule, x_T, 6, cond=cond,
                                                      generator=torch.Generator().manual_seed(3), **kw))
