"""Shard-building helpers shared by the shard tests."""
import io
import tarfile

import numpy as np
from PIL import Image


def tar_bytes(members):
    """A tar of (name, bytes) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def png_bytes(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()
