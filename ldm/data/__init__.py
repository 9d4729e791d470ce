"""Datasets (image folder, bundled sample photos), the shared image transform, and the config-built DataModule.

The names below are imported on first use, so a light submodule (e.g. `ldm.data.captions`, read by
scripts/make_shards.py before its arguments are parsed) loads without torch, and datasets stay light in workers.
"""

import importlib

_LAZY = {"BadImageWarning": "ldm.data.skipped_images", "SkipCounter": "ldm.data.skipped_images", "skipped_count": "ldm.data.skipped_images",
         "ImageFolder": "ldm.data.image_folder", "SamplePhotos": "ldm.data.sample_photos",
         "ImageTransform": "ldm.data.transforms", "load_image": "ldm.data.transforms",
         "to_float_array": "ldm.data.transforms", "to_rgb": "ldm.data.transforms", "to_uint8": "ldm.data.transforms",
         "DataModuleFromConfig": "ldm.data.datamodule", "WrappedDataset": "ldm.data.datamodule"}

__all__ = sorted(_LAZY)


def __getattr__(name):
    """The public name `name`, imported from its module on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ldm.data' has no attribute '{name}'")
