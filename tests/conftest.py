"""Test-wide settings: offline, deterministic, quiet."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Test-only modules that configs in the tests name as targets (see ldm/targets.py: the allow-list).
os.environ.setdefault("LDM_ALLOW_TARGETS",
                      "trainer_dummies,diffusion_configs,reliability_helpers,boom_mod,collections,tests")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
TESTS = os.path.join(ROOT, "tests")  # shared test helpers (clip_helpers); importlib mode adds no test folder itself
if TESTS not in sys.path:
    sys.path.insert(1, TESTS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def repo_root():
    return ROOT


@pytest.fixture
def single_thread():
    """Tiny models run fastest on one thread, and then do not fight other processes for the cores (folders whose
    tests are all tiny models make this autouse in their conftest)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
