"""Hyperparameters logged at start: the merged config plus parameter counts, dataset sizes, git commit and command
line, in the wandb run config, TensorBoard's hparams and the CSV hparams.yaml of real (tiny) main.py runs."""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from torch import nn

from ldm.trainer import hparams as H

HERE = os.path.dirname(os.path.abspath(__file__))
DIFFUSION_TESTS = os.path.join(os.path.dirname(HERE), "models", "diffusion")
if DIFFUSION_TESTS not in sys.path:
    sys.path.insert(0, DIFFUSION_TESTS)

from diffusion_configs import ddpm_config  # noqa: E402
from trainer_dummies import tiny_config  # noqa: E402
from trainer_helpers import only_run_folder  # noqa: E402

BASE_LR = 2.5e-4
UNET_WIDTH = 32


class Frozen(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(3, 4)  # 16 parameters
        self.head = nn.Linear(4, 2)  # 10 parameters
        self.trunk.requires_grad_(False)


class Data:
    datasets = {"train": list(range(7)), "validation": list(range(3)), "stream": iter(())}


def test_run_hyperparameters_holds_config_counts_sizes_commit_and_command():
    from omegaconf import OmegaConf

    config = OmegaConf.create({"model": {"base_learning_rate": BASE_LR, "params": {"width": 3, "w2": "${.width}"}}})
    params = H.run_hyperparameters(config, Frozen(), Data(), command="python main.py -t")
    assert params["model"] == {"base_learning_rate": BASE_LR, "params": {"width": 3, "w2": 3}}  # resolved
    run = params[H.RUN_KEY]
    assert run["parameters"] == {"all": {"total": 26, "trainable": 10}, "trunk": {"total": 16, "trainable": 0},
                                 "head": {"total": 10, "trainable": 10}}
    assert run["dataset_sizes"] == {"train": 7, "validation": 3}  # the iterable without a length is left out
    assert run["command"] == "python main.py -t"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(H.__file__))))
    if shutil.which("git") and os.path.exists(os.path.join(root, ".git")):
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert run["git"]["commit"] == head and isinstance(run["git"]["dirty"], bool)
    else:
        assert "git" not in run
    assert H.git_commit(str(HERE)) is None  # inside a checkout but not its root (e.g. an installed copy): None
    assert H.command_line(["-b", "a b.yaml"], program="main.py") == "python main.py -b 'a b.yaml'"


def test_a_failing_logger_is_a_warning(caplog):
    class Broken:
        def log_hyperparams(self, params):
            raise TypeError("no nested values")

    H.log_hyperparameters([Broken()], {"a": {"b": 1}})
    assert "could not log the hyperparameters to Broken: TypeError" in caplog.text


def _config(tmp_path, **trainer):
    """A tiny pixel-space DDPM (UNet width UNET_WIDTH) through main.py, 2 batches, no images or validation."""
    config = tiny_config(max_steps=2, limit_val_batches=0, enable_progress_bar=False, **trainer)
    unet = ddpm_config()["params"]["unet_config"]
    unet["params"].update(model_channels=UNET_WIDTH, channel_mult=[1], attention_resolutions=[], num_head_channels=-1)
    config["model"] = {"base_learning_rate": BASE_LR, **ddpm_config(unet_config=unet, timesteps=10, use_ema=False)}
    config["lightning"]["callbacks"] = {"image_logger": {"params": {"disabled": True}}}
    path = tmp_path / "ddpm_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _wandb_offline_run(run_dir):
    """(config, display name, group) recorded in an offline run's `.wandb` log, the file `wandb sync` uploads
    (wandb >= 0.19 writes no files/config.yaml offline). The log is LevelDB-style: a 7-byte header, then 32 KiB
    blocks of records (crc 4, length 2, type 1: full / first / middle / last) holding protobuf `Record`s."""
    (path,) = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "*.wandb"))
    for _ in range(100):  # wandb's service may still be flushing the file when finish() has returned
        with open(path, "rb") as f:
            config, name, group = _parse_wandb_log(f.read())
        if name and "run" in config:
            break
        time.sleep(0.1)
    return config, name, group


def _parse_wandb_log(raw):
    import json

    from wandb.proto import wandb_internal_pb2

    pos, block, pending, config, name, group = 7, 32768, b"", {}, None, None
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        if pos + 7 + length > len(raw):  # not written yet
            break
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        which = record.WhichOneof("record_type")
        if which == "run":  # later run records (updates) may leave these empty
            name, group = name or record.run.display_name, group or record.run.run_group
        if which in ("run", "config"):
            for item in (record.run.config if which == "run" else record.config).update:
                config[item.key] = json.loads(item.value_json)
    return config, name, group


def _tensorboard_hparams(folder):
    """The hparams (flattened key -> python value) of the session-start summary in a TensorBoard event file."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    found = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/session_start_info":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    for key, v in data.session_start_info.hparams.items():
                        found[key] = getattr(v, v.WhichOneof("kind"))
    return found


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_wandb_tensorboard_and_csv_runs_log_the_config(tmp_path, monkeypatch):
    import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = _config(tmp_path)
    logs = tmp_path / "logs"
    assert main.main(["-b", config, "-t", "-l", str(logs), "-n", "hp"]) == 0  # wandb is the default logger
    run = only_run_folder(logs)

    # wandb: nested run config, run name = folder, group = the -n name
    wandb_config, name, group = _wandb_offline_run(run)
    assert (name, group) == (os.path.basename(run), "hp")
    assert wandb_config["model"]["base_learning_rate"] == BASE_LR
    assert wandb_config["model"]["params"]["unet_config"]["params"]["model_channels"] == UNET_WIDTH
    facts = wandb_config["run"]
    counts = facts["parameters"]
    assert counts["all"]["total"] == counts["all"]["trainable"] == counts["model"]["total"] > 1000  # the UNet
    assert facts["dataset_sizes"] == {"train": 16, "validation": 16}
    assert facts["command"].startswith("python main.py -b ") and "-n hp" in facts["command"]

    # CSV: <run>/hparams.yaml holds the same nested config
    with open(os.path.join(run, "hparams.yaml")) as f:
        csv_hparams = yaml.safe_load(f)
    assert csv_hparams["model"]["base_learning_rate"] == BASE_LR
    assert csv_hparams["model"]["params"]["unet_config"]["params"]["model_channels"] == UNET_WIDTH

    # the end-of-training plots were written into the run folder
    assert {"train_losses.png", "learning_rate.png"} <= set(os.listdir(os.path.join(run, "plots")))

    # TensorBoard, on resuming the run with --logger tensorboard: flattened hparams, lists as strings, the new
    # command line; log.txt gains the resume's lines (Lightning's "Restored all states ...") after the first run's
    assert main.main(["-r", run, "--logger", "tensorboard", "lightning.trainer.max_steps=3",
                      "lightning.callbacks.image_logger.params.disabled=false",
                      "lightning.callbacks.image_logger.params.batch_frequency=1",
                      "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=2",
                      "lightning.callbacks.image_logger.params.log_images_kwargs.N=2",
                      "lightning.callbacks.image_logger.params.log_images_kwargs.plot_diffusion_rows=false"]) == 0
    tb = _tensorboard_hparams(os.path.join(run, "tensorboard"))
    assert tb["model/base_learning_rate"] == pytest.approx(BASE_LR)
    assert tb["model/params/unet_config/params/model_channels"] == UNET_WIDTH
    assert tb["model/params/unet_config/params/channel_mult"] == "[1]"
    assert tb["run/dataset_sizes/train"] == 16 and tb["run/command"].startswith(f"python main.py -r {run}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run, "tensorboard"))
    events.Reload()
    assert {"train/inputs", "train/samples"} <= set(events.Tags()["images"])  # the image grids
    with open(os.path.join(run, "tensorboard", "hparams.yaml")) as f:
        assert yaml.safe_load(f)["model"]["params"]["unet_config"]["params"]["model_channels"] == UNET_WIDTH
    with open(os.path.join(run, "log.txt")) as f:
        log_text = f.read()
    first, resumed = log_text.split("Restored all states from the checkpoint")
    assert "DiffusionWrapper has" in first and "Setting learning rate" in first  # from before the folder existed
    assert f"resuming from {run}/checkpoints/last.ckpt" in first.rsplit("Setting learning rate", 1)[1]
    assert "`Trainer.fit` stopped: `max_steps=3` reached" in resumed
