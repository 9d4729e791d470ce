import pytest
import torch
from omegaconf import OmegaConf

from ldm.targets import config_target
from ldm.util import ConfigError, instantiate_from_config, load_configs


class Base(torch.nn.Module):
    def __init__(self, disc_start, kl_weight=1.0):
        super().__init__()
        self.disc_start = disc_start
        self.kl_weight = kl_weight


class Child(Base):
    def __init__(self, extra=0, **kwargs):
        super().__init__(**kwargs)
        self.extra = extra


class Outer(torch.nn.Module):
    def __init__(self, lossconfig):
        super().__init__()
        self.loss = instantiate_from_config(lossconfig)


def test_builds_object_and_forwards_kwargs_through_mro():
    obj = instantiate_from_config({"target": f"{__name__}.Child", "params": {"disc_start": 3, "extra": 1}})
    assert (obj.disc_start, obj.extra, obj.kl_weight) == (3, 1, 1.0)


def test_special_strings_return_none():
    assert instantiate_from_config("__is_unconditional__") is None
    assert instantiate_from_config("__is_first_stage__") is None


def test_misspelled_nested_key_names_path_and_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
model:
  target: {__name__}.Outer
  params:
    lossconfig:
      target: {__name__}.Child
      params:
        disc_strat: 5
""")
    cfg = load_configs([str(path)])
    with pytest.raises(ConfigError) as err:
        instantiate_from_config(cfg.model)
    msg = str(err.value)
    assert "model.params.lossconfig.params.disc_strat" in msg
    assert "did you mean 'disc_start'" in msg
    assert str(path) in msg


def test_missing_target_and_bad_import_and_missing_param():
    with pytest.raises(ConfigError, match="missing 'target'"):
        instantiate_from_config(OmegaConf.create({"model": {"params": {}}}).model)
    with pytest.raises(ConfigError, match="cannot import 'ldm.nope.Nothing'"):
        instantiate_from_config({"target": "ldm.nope.Nothing"}, key_path="model")
    with pytest.raises(ConfigError, match="needs parameter"):
        instantiate_from_config({"target": f"{__name__}.Base", "params": {}})


def test_dotlist_overrides_and_source_tracking(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("model:\n  params:\n    x: 1\n    y: 2\n")
    b.write_text("model:\n  params:\n    y: 3\n")
    cfg = load_configs([str(a), str(b)], ["model.params.x=7"])
    assert cfg.model.params.x == 7 and cfg.model.params.y == 3
    with pytest.raises(ConfigError, match="not found"):
        load_configs([str(tmp_path / "missing.yaml")])


def test_constructor_errors_keep_their_type_and_get_a_note():
    class Boom(Exception):
        pass

    def explode():
        raise Boom("original")

    import types
    mod = types.ModuleType("boom_mod")
    mod.explode = config_target(explode)
    import sys
    sys.modules["boom_mod"] = mod
    with pytest.raises(Boom) as err:
        instantiate_from_config({"target": "boom_mod.explode"}, key_path="model.params.x")
    assert any("model.params.x" in n for n in getattr(err.value, "__notes__", []))


def test_class_that_swallows_kwargs_accepts_any_key():
    obj = instantiate_from_config({"target": "ldm.models.autoencoder.IdentityFirstStage",
                                   "params": {"embed_dim": 4, "ddconfig": {}, "vq_interface": True}})
    assert obj.vq_interface is True


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_for_model_sections_apply_by_class_in_file_order(tmp_path):
    base = _write(tmp_path / "base.yaml", f"model:\n  target: {__name__}.Child\n  params:\n    disc_start: 1\n")
    overlay = _write(tmp_path / "overlay.yaml",
                     "shared: 1\nfor_model:\n"
                     f"  {__name__}.Base:\n    model: {{params: {{disc_start: 5, kl_weight: 0.5}}}}\n"
                     f"  {__name__}.Outer:\n    model: {{params: {{disc_start: 9}}}}\n"
                     f"  {__name__}.Child:\n    model: {{params: {{extra: 3}}}}\n")
    later = _write(tmp_path / "later.yaml", "model:\n  params:\n    kl_weight: 0.25\n")
    cfg = load_configs([base, overlay, later], ["model.params.extra=4"])
    # Base and Child (a subclass match and an exact one) apply, Outer does not; later files and the command line win.
    assert OmegaConf.to_container(cfg.model.params) == {"disc_start": 5, "kl_weight": 0.25, "extra": 4}
    assert cfg.shared == 1 and "for_model" not in cfg
    model = instantiate_from_config(cfg.model)
    assert (model.disc_start, model.extra) == (5, 4)


def test_for_model_section_errors_name_the_file(tmp_path):
    overlay = _write(tmp_path / "overlay.yaml", f"for_model:\n  {__name__}.Outer:\n    model: {{params: {{}}}}\n")
    base = _write(tmp_path / "base.yaml", f"model:\n  target: {__name__}.Child\n")
    with pytest.raises(ConfigError, match=r"overlay\.yaml: none of its 'for_model' sections .*Outer.* applies to "
                                          r"model.target .*Child"):
        load_configs([base, overlay])
    with pytest.raises(ConfigError, match=r"overlay\.yaml: .*no earlier config file sets"):
        load_configs([overlay, base])
    bad = _write(tmp_path / "bad.yaml", "for_model:\n  ldm.nope.Nothing:\n    a: 1\n")
    with pytest.raises(ConfigError, match=r"for_model\.ldm\.nope\.Nothing: cannot import"):
        load_configs([base, bad])


def test_a_key_from_a_for_model_section_is_traced_to_it(tmp_path):
    base = _write(tmp_path / "base.yaml", f"model:\n  target: {__name__}.Child\n  params: {{disc_start: 1}}\n")
    overlay = _write(tmp_path / "overlay.yaml",
                     f"for_model:\n  {__name__}.Base:\n    model: {{params: {{disc_strat: 2}}}}\n")
    cfg = load_configs([base, overlay])
    with pytest.raises(ConfigError, match=r"model\.params\.disc_strat \(from .*overlay\.yaml \(for_model: .*Base\)\)"):
        instantiate_from_config(cfg.model)


@pytest.mark.parametrize("config, kind", [("autoencoder_kl_f8", "stage 1"), ("autoencoder_vq_f4", "stage 1"),
                                          ("ldm_txt2img", "stage 2"), ("ddpm_pixel", "stage 2"),
                                          ("ldm_inpainting", "stage 2"), ("ldm_txt2img_f4", "stage 2")])
def test_the_cpu_overlay_sizes_each_stage(repo_root, config, kind):
    cfg = load_configs([f"{repo_root}/configs/{config}.yaml", f"{repo_root}/configs/overlays/cpu.yaml"])
    assert cfg.lightning.trainer.accelerator == "cpu" and "for_model" not in cfg
    if kind == "stage 1":
        assert cfg.model.params.ddconfig.ch == 32 and cfg.data.params.batch_size == 4
    else:
        assert cfg.model.params.unet_config.params.model_channels == 64 and cfg.data.params.batch_size == 16
        # 64 px images: latent side 64 / f (f8: 8, f4: 16; the pixel model's "first stage" is f = 1)
        assert cfg.model.latent_size == {"ddpm_pixel": 64, "ldm_txt2img_f4": 16}.get(config, 8)


def test_latent_side_resolver_follows_the_first_stage():
    from omegaconf import OmegaConf

    from ldm.util import latent_side

    assert latent_side({"resolution": 64, "ch_mult": [1, 2, 4, 4]}) == 8
    assert latent_side({"resolution": 256, "ch_mult": [1, 2, 4]}) == 64 and latent_side({"resolution": 64}) == 64
    cfg = OmegaConf.create({"dd": {"resolution": 64, "ch_mult": [1, 2, 4]}, "size": "${ldm.latent_side:${dd}}"})
    assert cfg.size == 16
