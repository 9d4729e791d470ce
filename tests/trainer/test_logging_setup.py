"""Logging of the command-line tools: console format and streams, rank handling, log.txt with the records from
before the run folder existed, warnings in the file, Lightning's messages once, and a clean teardown."""

import logging
import warnings

import pytest
import torch
from torch import nn

from ldm.trainer import logging_setup as S


@pytest.fixture
def configured():
    """setup_logging(rank=0) for one test, always torn down."""
    S.setup_logging(rank=0)
    yield
    while S._state.depth:
        S.teardown_logging()


def test_console_format_and_streams(configured, capsys):
    logging.getLogger("ldm.some.module").info("restored 12 keys from a.ckpt")
    logging.getLogger("ldm.some.module").debug("not shown")
    logging.getLogger("ldm.data").warning("skipped %d unreadable files", 3)
    logging.getLogger("ldm.main").error("error: already worded", extra={"bare": True})
    logging.getLogger("urllib3").info("third-party INFO stays hidden")
    out, err = capsys.readouterr()
    assert out == "restored 12 keys from a.ckpt\n"
    assert err == "warning: skipped 3 unreadable files\nerror: already worded\n"


@pytest.fixture
def shown(monkeypatch):
    """Warnings as Python would show them (pytest records them instead of printing): installed before the set-up."""
    seen = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *args, **kwargs: seen.append(str(message)))
    return seen


def test_log_file_gets_earlier_records_warnings_and_lightning_messages(shown, configured, tmp_path, capsys):
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    from ldm.models.diffusion.restore import restore_weights

    ckpt = tmp_path / "w.ckpt"
    torch.save({"state_dict": nn.Linear(2, 2).state_dict()}, ckpt)
    restore_weights(nn.Linear(2, 2), str(ckpt))  # before the run folder exists: buffered
    path = S.attach_logfile(str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / S.LOG_FILE)
    assert S.attach_logfile(str(tmp_path / "run")) is None  # once
    rank_zero_info("Restored all states from the checkpoint at x.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a BadImageWarning-like note", UserWarning)
    out, err = capsys.readouterr()
    assert out.count("Restored all states") == 1  # Lightning's own handler does not print it a second time
    assert shown == ["a BadImageWarning-like note"]  # the warning is still shown as before
    text = open(path).read()
    lines = text.splitlines()
    assert f"Restored from {ckpt} with 0 missing and 0 unexpected keys" in lines[0]
    assert " INFO ldm.models.diffusion.restore: " in lines[0]
    assert any("Restored all states from the checkpoint at x.ckpt" in line for line in lines)
    assert any(" WARNING py.warnings: UserWarning: a BadImageWarning-like note" in line for line in lines)


def test_other_ranks_show_only_prefixed_warnings_and_write_no_file(tmp_path, capsys):
    S.setup_logging(rank=1)
    try:
        logging.getLogger("ldm.x").info("rank 1 info")
        logging.getLogger("ldm.x").warning("rank 1 problem")
        assert S.attach_logfile(str(tmp_path)) is None
    finally:
        S.teardown_logging()
    out, err = capsys.readouterr()
    assert out == "" and err == "[rank 1] warning: rank 1 problem\n"
    assert not (tmp_path / S.LOG_FILE).exists()


def test_teardown_restores_everything_and_nesting_counts(tmp_path):
    root = logging.getLogger()
    lightning = logging.getLogger("pytorch_lightning")
    before = (list(root.handlers), lightning.propagate, list(lightning.handlers), warnings.showwarning,
              logging.getLogger("ldm").level)
    S.setup_logging(rank=0)
    S.setup_logging(rank=0)  # a script called from main.py: no second set of handlers
    assert len(root.handlers) == len(before[0]) + 2 and lightning.propagate
    S.attach_logfile(str(tmp_path))
    S.teardown_logging()
    assert S._state.depth == 1 and len(root.handlers) == len(before[0]) + 2
    S.teardown_logging()
    S.teardown_logging()  # an extra call is harmless
    after = (list(root.handlers), lightning.propagate, list(lightning.handlers), warnings.showwarning,
             logging.getLogger("ldm").level)
    assert after == before
    assert S.attach_logfile(str(tmp_path / "later")) is None  # not configured: no file
