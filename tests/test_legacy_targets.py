"""Every model target named in the original CompVis/latent-diffusion configs (configs/ and models/*/config.yaml) and
in CompVis/stable-diffusion's v1-inference.yaml resolves through the allow-list; the inpainting_big layout (a nested
DummyLoss in its first stage) builds."""
import pytest
import torch
from omegaconf import OmegaConf

from ldm.models.from_run import INFERENCE_LOSS, inference_model_config
from ldm.util import ConfigError, instantiate_from_config, resolve_target

# Collected from the 20 original latent-diffusion configs and SD v1-inference.yaml (model, loss, scheduler,
# conditioner, data-module and callback targets).
ORIGINAL_TARGETS = (
    "ldm.models.diffusion.ddpm.LatentDiffusion",
    "ldm.models.autoencoder.AutoencoderKL",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "ldm.modules.encoders.modules.ClassEmbedder",
    "ldm.modules.encoders.modules.BERTEmbedder",
    "ldm.modules.encoders.modules.SpatialRescaler",
    "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    "ldm.modules.losses.LPIPSWithDiscriminator",
    "ldm.modules.losses.contperceptual.DummyLoss",
    "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "ldm.lr_scheduler.LambdaLinearScheduler",
    "ldm.lr_scheduler.LambdaWarmUpCosineScheduler",
    "torch.nn.Identity",
    "main.DataModuleFromConfig",
    "main.ImageLogger",
)

# The paper's dataset classes those configs name; they are not shipped (train on your own folders instead), so they
# must fail with a one-line error that names the target.
ORIGINAL_DATASETS = (
    "ldm.data.imagenet.ImageNetTrain", "ldm.data.imagenet.ImageNetValidation", "ldm.data.imagenet.ImageNetSRTrain",
    "ldm.data.imagenet.ImageNetSRValidation", "ldm.data.lsun.LSUNChurchesTrain", "ldm.data.lsun.LSUNBedroomsTrain",
    "taming.data.faceshq.CelebAHQTrain", "taming.data.faceshq.FFHQTrain", "ldm.data.openimages.FullOpenImagesTrain",
    "ldm.data.openimages.SuperresOpenImagesAdvancedTrain", "ldm.data.openimages.OpenImagesBBoxTrain",
    "ldm.data.landscapes.RFWTrain",
)


@pytest.mark.parametrize("target", ORIGINAL_TARGETS)
def test_original_target_resolves_to_an_allowed_class(target):
    obj = resolve_target(target, "model.target")
    assert isinstance(obj, type)


@pytest.mark.parametrize("target", ORIGINAL_DATASETS)
def test_original_dataset_targets_fail_clearly(target):
    with pytest.raises(ConfigError, match=target.replace(".", r"\.")):
        resolve_target(target, "data.params.train.target")


def test_contperceptual_dummy_loss_is_the_package_one():
    from ldm.modules.losses import DummyLoss
    from ldm.modules.losses.contperceptual import DummyLoss as legacy

    assert legacy is DummyLoss


def test_main_exports_instantiate_from_config():
    import main

    assert main.instantiate_from_config is instantiate_from_config
    assert main.DataModuleFromConfig.__name__ == "DataModuleFromConfig"
    with pytest.raises(AttributeError, match="no_such_name"):
        main.__getattr__("no_such_name")


def inpainting_big_like(first_stage_loss):
    """The original models/ldm/inpainting_big/config.yaml, shrunk: VQModelInterface (attn_type none) first stage
    with its own lossconfig, the first stage as conditioner, concat of masked-image latents and the mask."""
    dd = dict(attn_type="none", double_z=False, z_channels=3, resolution=16, in_channels=3, out_ch=3, ch=32,
              ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    unet = dict(image_size=8, in_channels=7, out_channels=3, model_channels=32, attention_resolutions=[2],
                num_res_blocks=1, channel_mult=[1, 2], num_heads=2, resblock_updown=True)
    return OmegaConf.create({"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": dict(
        linear_start=0.0015, linear_end=0.0205, timesteps=10, loss_type="l1", first_stage_key="image",
        cond_stage_key="masked_image", image_size=8, channels=3, concat_mode=True, monitor="val/loss",
        scheduler_config={"target": "ldm.lr_scheduler.LambdaWarmUpCosineScheduler",
                          "params": dict(verbosity_interval=0, warm_up_steps=10, max_decay_steps=50, lr_start=0.001,
                                         lr_max=0.1, lr_min=0.0001)},
        unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
        first_stage_config={"target": "ldm.models.autoencoder.VQModelInterface",
                            "params": dict(embed_dim=3, n_embed=16, monitor="val/rec_loss", ddconfig=dd,
                                           lossconfig=first_stage_loss)},
        cond_stage_config="__is_first_stage__")}})


def test_inpainting_big_layout_builds_and_samples():
    cfg = inpainting_big_like({"target": "ldm.modules.losses.contperceptual.DummyLoss"})
    model = instantiate_from_config(cfg.model).eval()
    assert type(model.first_stage_model.loss).__name__ == "DummyLoss"
    assert model.cond_stage_model is model.first_stage_model
    # what the original scripts/inpaint.py does with it
    from ldm.models.diffusion.ddim import DDIMSampler

    masked = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        c = model.cond_stage_model.encode(masked)
        c = torch.cat((c, torch.nn.functional.interpolate(torch.ones(1, 1, 16, 16), size=c.shape[-2:])), dim=1)
        samples, _ = DDIMSampler(model).sample(S=2, conditioning=c, batch_size=1, shape=(3, 8, 8), verbose=False)
        assert model.decode_first_stage(samples).shape == (1, 3, 16, 16)


def test_inference_rewrite_reaches_nested_losses():
    lpips = {"target": "ldm.modules.losses.LPIPSWithDiscriminator", "params": {"disc_start": 1}}
    cfg = inference_model_config(inpainting_big_like(lpips).model)
    assert OmegaConf.to_container(cfg.params.first_stage_config.params.lossconfig) == INFERENCE_LOSS
    model = instantiate_from_config(cfg)  # no LPIPS weights needed
    assert isinstance(model.first_stage_model.loss, torch.nn.Identity)
