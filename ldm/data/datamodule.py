"""`DataModuleFromConfig`: the CompVis `data:` section (`target: main.DataModuleFromConfig`) as a LightningDataModule."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ldm.data.buckets import BucketDataLoader
from ldm.data.latent_cache import CONFIG_KEY
from ldm.data.resumable import ResumableDataLoader, run_seed
from ldm.data.skipped_images import skipped_count
from ldm.util import ConfigError, get_obj_from_str, instantiate_from_config

# Dataset keys of the `data.params` section, and which of them each Trainer entry point needs / may use.
DATASET_KEYS = ("train", "validation", "test", "predict")
STAGE_REQUIRES = {"fit": "train", "validate": "validation", "test": "test", "predict": "predict"}
STAGE_ENTRY = {"fit": "Trainer.fit", "validate": "Trainer.validate", "test": "Trainer.test", "predict": "Trainer.predict"}


class WrappedDataset(Dataset):
    """Any indexable object with a length as a torch Dataset (the original `wrap: true` option)."""

    def __init__(self, dataset: Any):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Any:
        return self.data[index]


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and `random` in a DataLoader worker from the per-worker torch seed, so workers do not share streams."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def default_num_workers(batch_size: int) -> int:
    """The original default of 2 workers per batch item, capped by the CPU count."""
    return min(batch_size * 2, os.cpu_count() or 1)


def split_latent_cache(config: Any) -> tuple[Any, Any]:
    """(the dataset config without `params.latent_cache`, the cache folder or None): a split with
    `latent_cache: DIR` reads the cache written from that dataset (ldm.data.latent_cache) instead of its images."""
    params = config.get("params") if hasattr(config, "get") else None
    if params is None or params.get(CONFIG_KEY) is None:
        return config, None
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    plain["params"] = dict(plain["params"])
    return plain, plain["params"].pop(CONFIG_KEY)


class DataModuleFromConfig(pl.LightningDataModule):
    """Builds the train / validation / test / predict datasets from `{target, params}` configs and serves loaders.

    As in the original, a loader method exists only for a configured dataset, so Lightning skips validation when
    `validation` is absent. Defaults: `num_workers` = min(2 * batch_size, CPUs); workers persist across epochs when
    there are any; memory is pinned only when the trainer runs on CUDA. `skipped_files()` counts unreadable files.
    With `resumable` (default) the training loader of a map-style dataset is a `ResumableDataLoader`: its order and
    augmentations depend only on the run's seed, and a run interrupted mid-epoch resumes at the same batch.
    A dataset with aspect-ratio buckets (`bucket_sizes`, e.g. ImageFolder's `buckets`) gets a BucketDataLoader:
    one bucket per batch, resumable in the same way; a streamed one (ShardDataset's `buckets`) batches itself.
    A dataset config with `params.latent_cache: DIR` serves that latent cache (checked against the config's
    dataset) instead of decoding images: see ldm.data.latent_cache.
    """

    def __init__(self, batch_size: int, train: Any = None, validation: Any = None, test: Any = None,
                 predict: Any = None, wrap: bool = False, num_workers: int | None = None,
                 shuffle_test_loader: bool = False, use_worker_init_fn: bool = False,
                 shuffle_val_dataloader: bool = False, pin_memory: bool | None = None,
                 persistent_workers: bool | None = None, resumable: bool = True):
        super().__init__()
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ConfigError(f"data.params.batch_size must be a positive int, got {batch_size!r}")
        if num_workers is not None and num_workers < 0:
            raise ConfigError(f"data.params.num_workers must be >= 0, got {num_workers}")
        self.batch_size = int(batch_size)
        self.num_workers = default_num_workers(self.batch_size) if num_workers is None else int(num_workers)
        self.wrap = wrap
        self.shuffle_test_loader = shuffle_test_loader
        self.shuffle_val_dataloader = shuffle_val_dataloader
        self.use_worker_init_fn = use_worker_init_fn
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.resumable = resumable
        self.dataset_configs = {key: cfg for key, cfg in zip(DATASET_KEYS, (train, validation, test, predict))
                                if cfg is not None}
        self.datasets: dict[str, Dataset] = {}
        # Instance attributes, not class methods: Lightning treats an absent loader hook as "no such stage".
        loaders = {"train": self._train_dataloader, "validation": self._val_dataloader,
                   "test": self._test_dataloader, "predict": self._predict_dataloader}
        hooks = {"train": "train_dataloader", "validation": "val_dataloader", "test": "test_dataloader",
                 "predict": "predict_dataloader"}
        for key in self.dataset_configs:
            setattr(self, hooks[key], loaders[key])

    def prepare_data(self) -> None:
        """Run a dataset class's own `prepare_data(**params)` (downloads, indexing) on one process, when it has one."""
        for key, cfg in self.dataset_configs.items():
            try:
                target = get_obj_from_str(str(cfg["target"]))
            except Exception:
                continue  # setup() reports a bad target with the config key
            hook = getattr(target, "prepare_data", None)
            if callable(hook):
                hook(**dict(cfg.get("params", None) or {}))

    def _build(self, key: str) -> Dataset:
        """Instantiate (once) the dataset of `data.params.<key>`."""
        if key not in self.datasets:
            config, cache = split_latent_cache(self.dataset_configs[key])
            dataset = instantiate_from_config(config, key_path=f"data.params.{key}")
            if cache is not None:
                from ldm.data.latent_cache import CachedLatentDataset

                # the configured dataset is only scanned, to check that the cache was made from it
                dataset = CachedLatentDataset(str(cache), source=dataset, training=key == "train")
            self.datasets[key] = WrappedDataset(dataset) if self.wrap else dataset
        return self.datasets[key]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a stage needs (all configured ones when `stage` is None); a missing one is a ConfigError."""
        if stage is None:
            keys = list(self.dataset_configs)
        else:
            required = STAGE_REQUIRES.get(stage)
            if required is None:
                raise ValueError(f"unknown stage '{stage}'; expected one of {', '.join(STAGE_REQUIRES)} or None")
            if required not in self.dataset_configs:
                raise ConfigError(f"{STAGE_ENTRY[stage]} needs a '{required}' dataset but data.params.{required} "
                                  f"is not set (configured: {', '.join(self.dataset_configs) or 'none'})")
            keys = [required] + (["validation"] if stage == "fit" and "validation" in self.dataset_configs else [])
        for key in keys:
            self._build(key)

    def _use_pin_memory(self) -> bool:
        """Pin host memory only when batches go to a CUDA device (the trainer's, else whether CUDA exists)."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            try:
                return trainer.strategy.root_device.type == "cuda"
            except Exception:
                pass
        return torch.cuda.is_available()

    def _loader(self, key: str, shuffle: bool) -> DataLoader:
        """A DataLoader over dataset `key` with this module's worker / pinning settings."""
        dataset = self._build(key)
        iterable = isinstance(dataset, IterableDataset)
        workers = self.num_workers
        persistent = (workers > 0) if self.persistent_workers is None else (bool(self.persistent_workers) and workers > 0)
        common = dict(num_workers=workers, pin_memory=self._use_pin_memory(), persistent_workers=persistent,
                      worker_init_fn=worker_init_fn if self.use_worker_init_fn else None)
        bucketed = bool(getattr(dataset, "bucket_sizes", None))
        if bucketed and not iterable:
            # one bucket per batch; validation keeps its order (shuffle False) but still needs same-shape batches
            return BucketDataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, seed=run_seed(), **common)
        if key == "train" and self.resumable and not iterable:
            return ResumableDataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, seed=run_seed(), **common)
        batch_size = self.batch_size
        if bucketed:  # a stream (shards) groups itself into one-bucket batches; the loader passes them on whole
            dataset.batch_by_bucket(self.batch_size, workers)
            batch_size = None
        # an IterableDataset orders itself
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and not iterable, **common)
        if iterable and callable(getattr(dataset, "set_epoch", None)):
            # Lightning tells the loader's sampler the epoch; an iterable dataset (shards) orders itself, so pass it on
            loader.sampler.set_epoch = dataset.set_epoch
        return loader

    def _train_dataloader(self) -> DataLoader:
        """Shuffled loader over `data.params.train`."""
        return self._loader("train", shuffle=True)

    def _val_dataloader(self) -> DataLoader:
        """Loader over `data.params.validation` (shuffled only with shuffle_val_dataloader)."""
        return self._loader("validation", shuffle=self.shuffle_val_dataloader)

    def _test_dataloader(self) -> DataLoader:
        """Loader over `data.params.test` (shuffled only with shuffle_test_loader)."""
        return self._loader("test", shuffle=self.shuffle_test_loader)

    def _predict_dataloader(self) -> DataLoader:
        """Unshuffled loader over `data.params.predict`."""
        return self._loader("predict", shuffle=False)

    def skipped_files_by_split(self) -> dict[str, int]:
        """Unreadable files skipped so far per built dataset that tracks them (e.g. {"train": 2, "validation": 0})."""
        counts = {key: skipped_count(ds) for key, ds in self.datasets.items()}
        return {key: count for key, count in counts.items() if count is not None}

    def skipped_files(self) -> int:
        """Distinct unreadable files skipped so far by this process's datasets and their DataLoader workers (0 if none)."""
        return sum(self.skipped_files_by_split().values())
