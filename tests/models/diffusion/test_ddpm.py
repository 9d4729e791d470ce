"""DDPM (pixel space): state_dict names, EMA scope, optimizer, checkpoint loading, sampling and image logs."""
import pytest
import torch

from ldm.diffusion.schedule import SCHEDULE_BUFFER_NAMES
from ldm.util import ConfigError, instantiate_from_config

import diffusion_configs as dc


def build(**params):
    return instantiate_from_config(dc.ddpm_config(**params))


def test_state_dict_names_match_the_original():
    model = build()
    keys = list(model.state_dict())
    assert all(k.startswith(("model.diffusion_model.", "model_ema.")) or k in SCHEDULE_BUFFER_NAMES for k in keys)
    assert set(SCHEDULE_BUFFER_NAMES) <= set(keys) and "lvlb_weights" not in keys and "logvar" not in keys
    assert "model_ema.diffusion_modelinput_blocks00weight" in keys and "model_ema.num_updates" in keys
    assert model.betas.dtype == torch.float32 and model.num_timesteps == 100
    learned = build(learn_logvar=True, use_ema=False)
    assert "logvar" in learned.state_dict() and not any(k.startswith("model_ema.") for k in learned.state_dict())
    assert any(p is learned.logvar for p in learned.trainable_parameters())


def test_ema_scope_swaps_in_the_average_and_restores():
    model = build()
    before = {k: v.clone() for k, v in model.model.named_parameters()}
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(1.0)
    trained = {k: v.clone() for k, v in model.model.named_parameters()}
    with model.ema_scope("test"):
        assert all(torch.equal(p, before[k]) for k, p in model.model.named_parameters())
    assert all(torch.equal(p, trained[k]) for k, p in model.model.named_parameters())
    model.on_train_batch_end()  # one EMA step moves the shadows towards the trained weights
    shadow = model.model_ema.diffusion_modelout2weight
    assert not torch.equal(shadow, before["diffusion_model.out.2.weight"])


def test_optimizer_needs_learning_rate_and_builds_the_scheduler():
    model = build()
    with pytest.raises(RuntimeError, match="learning_rate"):
        model.configure_optimizers()
    model.learning_rate = 1e-3
    assert isinstance(model.configure_optimizers(), torch.optim.AdamW)
    sched = {"target": "ldm.lr_scheduler.LambdaLinearScheduler",
             "params": {"warm_up_steps": [10], "cycle_lengths": [1000], "f_start": [0.1], "f_max": [1.0],
                        "f_min": [1.0]}}
    model = build(scheduler_config=sched)
    model.learning_rate = 1e-3
    (opt,), (entry,) = model.configure_optimizers()
    assert entry["interval"] == "step" and opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="parameterization"):
        build(parameterization="score")
    with pytest.raises(ConfigError, match="positional"):
        build(use_positional_encodings=True)


def test_new_switches_give_a_finite_loss():
    model = build(parameterization="v", zero_terminal_snr=True, min_snr_gamma=5.0, offset_noise_strength=0.1)
    assert float(model.alphas_cumprod[-1]) == 0.0
    loss, logs = model.shared_step(dc.batch(n=2, size=8))
    assert torch.isfinite(loss) and set(logs) == {"train/loss_simple", "train/loss_vlb", "train/loss"}


def test_soft_min_snr_is_a_config_switch():
    from ldm.diffusion.weighting import MinSNRWeighting

    hard, soft = build(min_snr_gamma=5.0), build(min_snr_gamma=5.0, min_snr_soft=True)
    assert isinstance(soft.loss_fn.weighting, MinSNRWeighting) and soft.loss_fn.weighting.soft
    assert not hard.loss_fn.weighting.soft
    soft.load_state_dict(hard.state_dict())
    batch, t = dc.batch(n=2, size=8), torch.tensor([10, 90])
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = hard.get_input(batch, "image")
    hard_loss, soft_loss = hard.p_losses(x, t, noise)[0], soft.p_losses(x, t, noise)[0]
    assert torch.isfinite(soft_loss) and float(soft_loss) < float(hard_loss)  # the smooth minimum lies below


def test_init_from_ckpt_restores_and_resets_a_missing_ema(tmp_path):
    src = build()
    with torch.no_grad():
        for p in src.model.parameters():
            p.add_(0.5)
    path = tmp_path / "ddpm.ckpt"
    torch.save({"state_dict": src.state_dict()}, path)
    dst = build(ckpt_path=str(path), ignore_keys=["model_ema."])
    assert all(torch.equal(a, b) for a, b in zip(src.model.parameters(), dst.model.parameters()))
    # the EMA was ignored, so it restarts from the restored weights instead of random ones
    assert torch.equal(dst.model_ema.diffusion_modelout2weight, src.model.diffusion_model.out[2].weight)
    unet_only = build(ckpt_path=str(path), load_only_unet=True)
    assert all(torch.equal(a, b) for a, b in zip(src.model.parameters(), unet_only.model.parameters()))


def test_sample_and_log_images():
    model = build()
    x = model.sample(batch_size=2, sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 8, 8) and x.abs().max() <= 1.0 + 1e-6  # clip_denoised keeps pixels in range
    logs = model.log_images(dc.batch(n=3, size=8), N=3, n_row=2, ddim_steps=4, plot_denoise_rows=True,
                            split="train")
    assert set(logs) == {"inputs", "diffusion_row", "samples", "denoise_row"}
    assert logs["samples"].shape == (3, 3, 8, 8) and logs["diffusion_row"].shape[0] == 1
    assert all(v.dim() == 4 and v.min() >= -1 and v.max() <= 1 for v in logs.values())
