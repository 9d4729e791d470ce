"""Datasets (image folder, bundled sample photos), the shared image transform, and the config-built DataModule."""

from ldm.data.base import BadImageWarning, SkipCounter, skipped_count
from ldm.data.image_folder import ImageFolder
from ldm.data.sample_photos import SamplePhotos
from ldm.data.transforms import ImageTransform, load_image, to_float_array, to_rgb, to_uint8

__all__ = ["BadImageWarning", "DataModuleFromConfig", "ImageFolder", "ImageTransform", "SamplePhotos", "SkipCounter",
           "WrappedDataset", "load_image", "skipped_count", "to_float_array", "to_rgb", "to_uint8"]

_LAZY = {"DataModuleFromConfig": "ldm.data.datamodule", "WrappedDataset": "ldm.data.datamodule"}


def __getattr__(name):
    """Import the Lightning-based DataModule only when asked for, so datasets stay light to import (e.g. in workers)."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ldm.data' has no attribute '{name}'")
