"""One random-trunk LPIPS shared by the loss tests (building VGG16 costs about a second)."""

import logging
import socket

import pytest

from ldm.modules.losses.lpips import LPIPS


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _no_network(*args, **kwargs):
    raise AssertionError("LPIPS tried to open a network connection")


@pytest.fixture(scope="session")
def random_lpips():
    """(LPIPS(random_trunk=True) built with sockets disabled, the warnings it logged)."""
    capture = _Capture()
    logger = logging.getLogger("ldm.modules.losses.lpips")
    logger.addHandler(capture)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(socket.socket, "connect", _no_network)
            model = LPIPS(random_trunk=True)
    finally:
        logger.removeHandler(capture)
    return model, capture.messages
