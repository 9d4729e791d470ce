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
