import pytest
import torch
from omegaconf import OmegaConf

from ldm.models.autoencoder import VQModel, VQModelInterface
from ldm.util import instantiate_from_config, load_configs

from ae_configs import FixedBatch, fit, vq_config


def test_encode_decode_and_decode_code():
    model = instantiate_from_config(vq_config())
    x = torch.randn(2, 3, 32, 32)
    quant, emb_loss, (perplexity, _, indices) = model.encode(x)
    assert quant.shape == (2, 4, 16, 16) and emb_loss.ndim == 0 and perplexity.ndim == 0
    codes = indices.reshape(2, 16, 16)
    torch.testing.assert_close(model.decode_code(codes), model.decode(quant), rtol=1e-5, atol=1e-5)
    rec, (qloss, ind) = model(x)
    assert rec.shape == x.shape
    with pytest.raises(ValueError, match="indices of shape"):
        model.decode_code(codes.reshape(-1))


def test_interface_encodes_prequant_and_quantizes_in_decode():
    cfg = vq_config()
    cfg["target"] = "ldm.models.autoencoder.VQModelInterface"
    cfg["params"]["lossconfig"] = {"target": "torch.nn.Identity"}
    model = instantiate_from_config(cfg).eval()
    x = torch.randn(1, 3, 32, 32)
    h = model.encode(x)
    assert isinstance(model, VQModelInterface)
    torch.testing.assert_close(h, model.quant_conv(model.encoder(x)))
    quant = model.quantize(h)[0]
    assert not torch.equal(h, quant)
    torch.testing.assert_close(model.decode(h), model.decoder(model.post_quant_conv(quant)))
    torch.testing.assert_close(model.decode(h, force_not_quantize=True), model.decoder(model.post_quant_conv(h)))


def test_original_state_dict_names():
    keys = set(instantiate_from_config(vq_config()).state_dict())
    for k in ["quantize.embedding.weight", "quant_conv.weight", "post_quant_conv.weight", "encoder.conv_in.weight",
              "decoder.up.1.upsample.conv.weight"]:
        assert k in keys
    assert instantiate_from_config(vq_config()).state_dict()["quantize.embedding.weight"].shape == (64, 4)


def test_trains_reduces_reconstruction_and_logs_codebook_health():
    torch.manual_seed(0)
    cfg = vq_config(quantizer_config={"use_ema": True, "restart_dead_codes": True, "usage_window": 5})
    model = instantiate_from_config(cfg)
    model.learning_rate = 1e-3
    x = model.get_input({"image": FixedBatch().images}, "image")
    model.eval()
    with torch.no_grad():
        before = (model(x)[0] - x).abs().mean().item()
    model.train()
    trainer = fit(model, steps=30)
    model.eval()
    with torch.no_grad():
        after = (model(x)[0] - x).abs().mean().item()
    assert after < 0.7 * before, (before, after)
    logged = trainer.callback_metrics
    for key in ["train/codebook_perplexity", "train/codebook_usage_fraction", "train/codebook_dead_codes",
                "train/quant_loss"]:
        assert key in logged, (key, sorted(logged))


def test_ema_weights_and_batch_resize_range():
    cfg = vq_config(use_ema=True, batch_resize_range=[16, 32])
    model = instantiate_from_config(cfg)
    model.learning_rate = 1e-3
    trainer = fit(model, steps=6)
    assert int(model.model_ema.num_updates) == 6
    # log_images with EMA reconstructions
    images = model.log_images({"image": FixedBatch().images[:2]}, plot_ema=True)
    assert {"inputs", "reconstructions", "reconstructions_ema"} <= set(images)


@pytest.mark.parametrize("f,factor", [("f4", 4), ("f8", 8), ("f16", 16)])
def test_paper_vq_configs_build_with_cpu_overlay(repo_root, f, factor):
    cfg = load_configs([f"{repo_root}/configs/autoencoder_vq_{f}.yaml", f"{repo_root}/configs/overlays/cpu.yaml"])
    model = instantiate_from_config(cfg.model)
    quant, _, _ = model.encode(torch.randn(1, 3, 64, 64))
    assert quant.shape == (1, model.embed_dim, 64 // factor, 64 // factor)


def test_original_taming_targets_are_mapped(repo_root):
    cfg = OmegaConf.create(vq_config())
    cfg.target = "taming.models.vqgan.VQModel"
    cfg.params.lossconfig.target = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
    assert isinstance(instantiate_from_config(cfg), VQModel)
