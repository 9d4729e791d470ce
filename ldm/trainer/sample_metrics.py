"""SampleMetrics: every N training batches, sample M images from the EMA weights and log KID (FID, IS, CLIP score).

Config (`lightning.callbacks.sample_metrics`; off in the full configs, on in configs/overlays/cpu.yaml with
`features: random`):

    sample_metrics:
      target: ldm.trainer.sample_metrics.SampleMetrics
      params: {every_n_batches: 2000, n_samples: 256, sampler: ddim, steps: 10, scale: 3.0,
               features: inception, metrics: [kid, fid], reference: null}

Logged to every logger at the training step: `samples/kid`, `samples/kid_std`, `samples/fid`, `samples/is`,
`samples/clip_score` (the ones configured) and `samples/eval_seconds` (the cost of one evaluation). Images are
conditioned on the captions / class labels of the validation data (image i: seed `seed + i`, item `i % len`), so
the points of one run differ only by the weights. The reference is the validation data (its first `n_reference`
images) or a folder / shard urls; its features are cached in `<logdir>/sample_metrics/`.

DDP: every rank joins each evaluation (the batch counts are equal on all ranks). Rank r samples images
r*k .. r*k+k-1 (k = ceil(M / world size)), the features are all-gathered, and every rank computes the same numbers
from the same gathered features (metrics never sync by themselves); loggers write on rank 0. The reference
features are computed by every rank from the same images (rank 0 writes the cache), so there is no other
collective call that a rank could miss.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_info

from ldm.data.batch_keys import CLASS_KEY, TEXT_KEYS
from ldm.util import batches_seen

log = logging.getLogger(__name__)

METRIC_PREFIX = "samples/"
KNOWN_METRICS = ("kid", "fid", "is", "clip_score")
CACHE_FOLDER = "sample_metrics"


def conditioning_kind(pl_module: Any) -> str | None:
    """"text", "class", None (unconditional) or "other" (image-conditioned: not sampled by this callback)."""
    if getattr(pl_module, "cond_stage_model", None) is None:
        return None
    key = getattr(pl_module, "cond_stage_key", None)
    return "text" if key in TEXT_KEYS else "class" if key == CLASS_KEY else "other"


def validation_dataset(trainer: pl.Trainer) -> tuple[Any, dict[str, Any]] | tuple[None, None]:
    """(the validation dataset, unwrapped; its config as the cache identity), or (None, None)."""
    datamodule = trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "datasets"):
        return None, None
    if "validation" not in datamodule.datasets and "validation" in getattr(datamodule, "dataset_configs", {}):
        datamodule.setup("validate")
    dataset = datamodule.datasets.get("validation")
    if dataset is None:
        return None, None
    from omegaconf import OmegaConf

    config = datamodule.dataset_configs.get("validation", {})
    config = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    return getattr(dataset, "data", dataset), {"data": config}


class SampleMetrics(Callback):
    """KID (and FID / IS / CLIP score) of `n_samples` images sampled with `sampler` / `steps` / guidance `scale`
    (EMA weights) after every `every_n_batches` training batches, against `reference` (None: the validation data).
    `features`: "inception" (downloads its weights once when online; `inception_weights` for a local copy) or
    "random" (the offline test extractor). `clip`: a CLIP hub id or folder for `clip_score` (text models)."""

    def __init__(self, every_n_batches: int = 2000, n_samples: int = 256, sampler: str = "ddim", steps: int = 10,
                 scale: float = 3.0, features: str = "inception", metrics: Sequence[str] = ("kid",),
                 reference: str | None = None, n_reference: int = 1000, batch_size: int = 32, seed: int = 0,
                 inception_weights: str | None = None, clip: str | None = None):
        super().__init__()
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = sorted(set(metrics) - set(KNOWN_METRICS))
        if unknown or not metrics:
            raise ValueError(f"SampleMetrics: metrics {unknown or metrics} not known; choose from "
                             f"{', '.join(KNOWN_METRICS)}")
        if "clip_score" in metrics and not clip:
            raise ValueError("SampleMetrics: metrics has clip_score but no `clip` (a CLIP hub id or local folder)")
        if min(int(every_n_batches), int(n_samples), int(n_reference), int(batch_size)) < 1 or int(n_samples) < 2:
            raise ValueError("SampleMetrics: every_n_batches, n_reference, batch_size must be >= 1 and n_samples >= 2")
        self.every, self.n, self.sampler, self.steps = int(every_n_batches), int(n_samples), sampler, int(steps)
        self.scale, self.features_name, self.metrics = float(scale), features, metrics
        self.reference_spec, self.n_reference, self.batch_size = reference, int(n_reference), int(batch_size)
        self.seed, self.inception_weights, self.clip = int(seed), inception_weights, clip
        self.enabled = False
        self.values: list[Any] | None = None
        self.kind: str | None = None
        self._extractor: torch.nn.Module | None = None
        self._reference: dict[str, torch.Tensor] | None = None
        self._dataset: tuple[Any, dict[str, Any]] | None = None
        self._clip: tuple[Any, Any] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ldm.eval.features import build_features
        from ldm.eval.samples import conditioning_values

        self.kind = conditioning_kind(pl_module)
        dataset, identity = validation_dataset(trainer)
        if self.kind == "other" or not hasattr(pl_module, "sample_shape") or \
                (dataset is None and (self.kind is not None or self.reference_spec is None)):
            log.info("SampleMetrics is off: it needs a text-, class- or unconditional diffusion model and validation "
                     "data (or a `reference` for unconditional models)")
            self.enabled = False
            return
        if "clip_score" in self.metrics and self.kind != "text":
            self.metrics = [m for m in self.metrics if m != "clip_score"]
            log.info("SampleMetrics: clip_score dropped (not a text-conditional model)")
        self.values = conditioning_values(dataset, self.kind, getattr(pl_module, "cond_stage_key", None), self.n)
        self._dataset = (dataset, identity)
        # built now so that a missing weights file stops the run before training, not after N batches
        self._extractor = build_features(self.features_name, self.inception_weights)
        if "clip_score" in self.metrics:
            from ldm.eval.features import load_clip

            self._clip = load_clip(self.clip)
        self.enabled = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        done = batches_seen(trainer) + 1
        if self.enabled and done % self.every == 0:
            self.evaluate(trainer, pl_module)

    def _reference_features(self, trainer: pl.Trainer, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The reference features at the samples' size: the cached file in <logdir>/sample_metrics/, else computed
        (on every rank from the same images; rank 0 writes the cache)."""
        from ldm.eval.reference import (
            dataset_reference,
            open_reference,
            reference_features,
        )

        if self._reference is None:
            if self.reference_spec:
                reference = open_reference(self.reference_spec)
            else:
                dataset, identity = self._dataset
                reference = dataset_reference(dataset, identity, limit=self.n_reference)
            cache = os.path.join(trainer.default_root_dir, CACHE_FOLDER)
            self._reference, path, reused = reference_features(reference, self._extractor, size, cache,
                                                               self.batch_size, write=trainer.is_global_zero)
            log.info("SampleMetrics: reference %s, %s (%s)", reference.description, path,
                     "cached" if reused else "computed")
        return self._reference

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """One evaluation on every rank; returns (and logs) the metrics."""
        from ldm.eval import metrics as M
        from ldm.eval.features import extract
        from ldm.eval.reference import from_model_range
        from ldm.inference.generate import seeded_samples
        from ldm.inference.sampling import image_seed

        start = time.perf_counter()
        self._extractor.to(pl_module.device)
        world, rank = max(trainer.world_size, 1), trainer.global_rank
        per_rank = math.ceil(self.n / world)
        indices = [rank * per_rank + j for j in range(per_rank)]  # beyond n on the last ranks: padding, dropped
        was_training = pl_module.training
        pl_module.eval()
        images = []
        try:
            with trainer.precision_plugin.forward_context():
                for b in range(0, per_rank, self.batch_size):
                    chunk = indices[b:b + self.batch_size]
                    values = None if self.values is None else [self.values[i % self.n] for i in chunk]
                    seeds = [image_seed(self.seed, i) for i in chunk]
                    out = seeded_samples(pl_module, pl_module.sample_shape(), values, seeds, self.sampler, self.steps,
                                         self.scale if values is not None else 1.0)
                    images.append(from_model_range(out))
        finally:
            pl_module.train(was_training)
        images_u8 = torch.cat(images)
        reference_start = time.perf_counter()
        real = self._reference_features(trainer, tuple(images_u8.shape[-2:]))
        reference_seconds = time.perf_counter() - reference_start
        local = extract(self._extractor, images_u8, self.batch_size)
        fake = {k: self._gather(pl_module, v)[: self.n] for k, v in local.items()}
        out = M.generation_metrics(real, fake, [m for m in self.metrics if m != "clip_score"])
        if "clip_score" in self.metrics:
            valid = [j for j, i in enumerate(indices) if i < self.n]
            score = M.clip_score(images_u8[valid], [self.values[indices[j]] for j in valid], lambda: self._clip,
                                 self.batch_size, pl_module.device) if valid else 0.0
            pair = torch.tensor([score * len(valid), float(len(valid))], device=pl_module.device)
            total = self._gather(pl_module, pair[None]).sum(0)
            out["clip_score"] = float(total[0] / total[1].clamp(min=1))
        seconds = time.perf_counter() - start
        logged = {METRIC_PREFIX + {"kid_mean": "kid", "is_mean": "is"}.get(k, k): v for k, v in out.items()}
        logged[METRIC_PREFIX + "eval_seconds"] = seconds
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)
        rank_zero_info(f"sample metrics after {batches_seen(trainer) + 1} batches ({self.n} samples, {seconds:.1f} s"
                       f"{f', reference {reference_seconds:.1f} s' if reference_seconds > 1 else ''}): " +
                       ", ".join(f"{k[len(METRIC_PREFIX):]} {v:.4g}" for k, v in logged.items()))
        return logged

    @staticmethod
    def _gather(pl_module: pl.LightningModule, x: torch.Tensor) -> torch.Tensor:
        """(world * B, ...) from every rank's (B, ...), rank order; the tensor itself on one process."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return x
        gathered = pl_module.all_gather(x.to(pl_module.device))
        return gathered.reshape(-1, *x.shape[1:]).cpu()
