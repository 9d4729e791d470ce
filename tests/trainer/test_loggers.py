"""Logger selection: wandb online only with credentials (else offline), CSV always, clear errors."""

import importlib.util
import os

import pytest
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from ldm.trainer import loggers as L
from ldm.util import ConfigError


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    return tmp_path


def test_credentials_sources(no_credentials, monkeypatch):
    assert L.wandb_credentials() is None and L.wandb_mode() == "offline"
    (no_credentials / "netrc").write_text("machine api.wandb.ai login user password abc123\n")
    assert L.wandb_credentials() == str(no_credentials / "netrc") and L.wandb_mode() == "online"
    assert L.wandb_mode(debug=True) == "offline"
    (no_credentials / "netrc").unlink()
    (no_credentials / "wandb-config").mkdir()
    (no_credentials / "wandb-config" / "settings").write_text("[default]\napi_key = abc\n")
    assert L.wandb_credentials().endswith("settings")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert L.wandb_credentials() == "WANDB_API_KEY"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert L.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert L.wandb_mode() == "disabled"


def test_logger_kind():
    assert L.logger_kind(None) == "wandb"
    assert L.logger_kind("CSV") == "csv"
    assert L.logger_kind(OmegaConf.create({"target": "pytorch_lightning.loggers.WandbLogger"})) == "wandb"
    assert L.logger_kind({"target": "pytorch_lightning.loggers.TestTubeLogger"}) == "csv"  # gone in Lightning 2
    assert L.logger_kind({"target": "my.Logger"}) == "custom"
    with pytest.raises(ConfigError, match="unknown logger 'mlflow'"):
        L.logger_kind("mlflow")


def test_csv_is_always_written_alongside(tmp_path, no_credentials):
    only_csv = L.build_loggers("csv", str(tmp_path), "run")
    assert len(only_csv) == 1 and isinstance(only_csv[0], CSVLogger)
    wandb_and_csv = L.build_loggers(None, str(tmp_path), "run", project="p")
    assert isinstance(wandb_and_csv[0], WandbLogger) and wandb_and_csv[0]._offline
    assert wandb_and_csv[0]._wandb_init["dir"] == str(tmp_path) and wandb_and_csv[0]._wandb_init["id"] == "run"
    assert isinstance(wandb_and_csv[1], CSVLogger)
    spec = OmegaConf.create({"target": "pytorch_lightning.loggers.WandbLogger",
                             "params": {"tags": ["a"], "save_dir": "/elsewhere"}})
    wandb_logger = L.build_loggers(spec, str(tmp_path), "run")[0]
    assert wandb_logger._wandb_init["tags"] == ["a"] and wandb_logger._wandb_init["dir"] == str(tmp_path)
    assert os.listdir(tmp_path) == []  # building the loggers writes nothing


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None
                    or importlib.util.find_spec("tensorboardX") is not None, reason="tensorboard is installed")
def test_tensorboard_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="tensorboard package is not installed"):
        L.build_loggers("tensorboard", str(tmp_path), "run")


def test_unreachable_wandb_falls_back_to_offline(tmp_path, monkeypatch, no_credentials):
    online = L.make_wandb_logger(str(tmp_path), "run", "p", offline=False)

    def unreachable(self):
        raise TimeoutError("wandb server did not answer")

    monkeypatch.setattr(WandbLogger, "experiment", property(unreachable), raising=True)
    with pytest.warns(UserWarning, match="logging offline"):
        out = L.start_wandb([online, L.ResumableCSVLogger(str(tmp_path))], str(tmp_path), "run", "p")
    assert isinstance(out[0], WandbLogger) and out[0]._offline and isinstance(out[1], CSVLogger)


def test_wandb_id_is_sanitised():
    assert L._wandb_id("2024-01-01T00-00-00_a/b:c") == "2024-01-01T00-00-00_a-b-c"


# ------------------------------------------------------------------------------------ run name, group, images
def test_wandb_run_name_and_group_come_from_the_run_folder(tmp_path, no_credentials):
    assert L.run_group("2026-12-06T20-40-05_autoencoder_kl_f4") == "autoencoder_kl_f4"
    assert L.run_group("2026-12-06T20-40-05_my_run_v2") == "my_run_v2"  # -n my_run, --postfix _v2
    assert L.run_group("2026-12-06T20-40-05") is None and L.run_group("plain") == "plain"
    logger = L.build_loggers(None, str(tmp_path), "2026-12-06T20-40-05_cin")[0]
    assert logger._wandb_init["name"] == "2026-12-06T20-40-05_cin" and logger._wandb_init["group"] == "cin"
    spec = OmegaConf.create({"target": "pytorch_lightning.loggers.WandbLogger", "params": {"group": "sweep-3"}})
    assert L.build_loggers(spec, str(tmp_path), "2026-12-06T20-40-05_cin")[0]._wandb_init["group"] == "sweep-3"


def test_image_grids_reach_wandb_as_images_with_their_captions(tmp_path, no_credentials, monkeypatch):
    import torch
    import wandb

    from ldm.trainer.image_logger import ImageLogger, batch_captions
    from trainer_dummies import TinyModel
    from trainer_helpers import tiny_trainer

    logged = []
    monkeypatch.setattr(WandbLogger, "log_metrics", lambda self, metrics, step=None: logged.append((metrics, step)))
    wandb_logger = L.make_wandb_logger(str(tmp_path), "run", "p", offline=True)
    trainer = tiny_trainer(tmp_path, logger=[wandb_logger])
    model = TinyModel()
    batch = {"image": torch.zeros(3, 8, 8, 3), "caption": ["a red circle", "a blue square", "a green star"]}
    written = ImageLogger(max_images=2).log_img(trainer, model, batch, 0, split="val")
    assert set(written) == {"inputs", "reconstructions"}
    images = {key: value[0] for metrics, _ in logged for key, value in metrics.items()}
    assert set(images) == {"val/inputs", "val/reconstructions"}
    for key, image in images.items():
        assert isinstance(image, wandb.Image)
        assert image._caption == f"{key} at batch 0: 1) a red circle; 2) a blue square"  # the 2 shown, grid order
    assert batch_captions({"class_label": torch.tensor([3, 1])}) == ["class 3", "class 1"]
    assert batch_captions({"txt": ["x"], "caption": ["y"]}, key="txt") == ["x"]
