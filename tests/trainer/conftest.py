"""Trainer tests: put the dummies and helpers on sys.path; a tiny config fixture."""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

from trainer_helpers import write_config  # noqa: E402


@pytest.fixture
def tiny_yaml(tmp_path):
    """Path of a tiny config (TinyModel, 16 random 8x8 images, 4 batches)."""
    return write_config(tmp_path)
