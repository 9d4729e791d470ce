"""SampleMetrics callback: a 2-batch training run of a tiny text LDM logs samples/kid (+ fid, is, eval_seconds) into
metrics.csv with the random extractor, caches the reference features in the run folder, and switches itself off
where it cannot sample; config validation."""
import csv
import os
import sys

import pytest
import torch

from ldm.trainer.sample_metrics import SampleMetrics

DIFFUSION_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "diffusion")
if DIFFUSION_TESTS not in sys.path:
    sys.path.insert(0, DIFFUSION_TESTS)

import diffusion_configs  # noqa: E402


def datamodule(n=4):
    from ldm.data.datamodule import DataModuleFromConfig

    data = {"target": "diffusion_configs.ShapesLike", "params": {"n": n, "size": 16, "length": 8}}
    return DataModuleFromConfig(batch_size=2, train=data, validation=data, num_workers=0)


def fit(tmp_path, callback, cond="caption", steps=2):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from ldm.util import instantiate_from_config

    model = instantiate_from_config(diffusion_configs.ldm_config(cond))
    model.learning_rate = 1e-4
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, default_root_dir=str(tmp_path),
                         logger=CSVLogger(str(tmp_path), name="", version=""), callbacks=[callback],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1)
    torch.set_num_threads(1)
    trainer.fit(model, datamodule=datamodule())
    return trainer


def test_logs_kid_fid_is_every_batch_into_metrics_csv(tmp_path):
    callback = SampleMetrics(every_n_batches=1, n_samples=4, steps=2, features="random",
                             metrics=["kid", "fid", "is"], batch_size=4)
    fit(tmp_path, callback)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("samples/kid")]
    assert [int(r["step"]) for r in rows] == [1, 2]  # after batch 1 and batch 2
    for row in rows:
        assert float(row["samples/fid"]) >= 0 and float(row["samples/eval_seconds"]) > 0
        assert abs(float(row["samples/kid"])) < 10 and float(row["samples/is"]) >= 1 - 1e-6
    cached = os.listdir(tmp_path / "sample_metrics")
    assert len(cached) == 1 and cached[0].startswith("random-") and cached[0].endswith(".safetensors")
    assert callback.values == ["a shape number 0", "a shape number 1", "a shape number 2", "a shape number 3"]


def test_same_weights_same_numbers(tmp_path):
    """Seeds and captions are fixed, so an evaluation is a function of the weights alone."""
    callback = SampleMetrics(every_n_batches=100, n_samples=4, steps=2, features="random", metrics=["kid", "fid"])
    trainer = fit(tmp_path, callback, steps=1)
    model = trainer.lightning_module
    first, second = callback.evaluate(trainer, model), callback.evaluate(trainer, model)
    assert first["samples/fid"] == pytest.approx(second["samples/fid"])
    assert first["samples/kid"] == pytest.approx(second["samples/kid"])
    with torch.no_grad():  # other weights (the EMA copy is what is sampled): other numbers
        for t in [*model.model.parameters(), *model.model_ema.buffers()]:
            if t.is_floating_point() and t.ndim > 0:
                t.add_(0.2 * torch.randn_like(t))
    third = callback.evaluate(trainer, model)
    assert third["samples/fid"] != pytest.approx(first["samples/fid"], rel=1e-3)


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="not known"):
        SampleMetrics(metrics=["fidd"])
    with pytest.raises(ValueError, match="clip"):
        SampleMetrics(metrics=["kid", "clip_score"])
    with pytest.raises(ValueError, match="n_samples"):
        SampleMetrics(n_samples=1)


class _ToyClip(torch.nn.Module):
    config = None

    def get_image_features(self, pixel_values):
        return pixel_values.float().mean(dim=(2, 3)) + 1.0

    def get_text_features(self, input_ids, attention_mask=None):
        return torch.ones(len(input_ids), 3)


class _ToyProcessor:
    def __call__(self, images=None, text=None, return_tensors=None, padding=None):
        if images is not None:
            return {"pixel_values": torch.stack(images).float()}
        ids = torch.zeros(len(text), 1, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": ids + 1}


def test_clip_score_for_a_text_model(tmp_path, monkeypatch):
    monkeypatch.setattr("ldm.eval.features.load_clip", lambda name: (_ToyClip(), _ToyProcessor()))
    callback = SampleMetrics(every_n_batches=1, n_samples=3, steps=2, features="random",
                             metrics=["kid", "clip_score"], clip="toy-clip")
    fit(tmp_path, callback, steps=1)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("samples/clip_score")]
    assert len(rows) == 1 and 0 < float(rows[0]["samples/clip_score"]) <= 100
