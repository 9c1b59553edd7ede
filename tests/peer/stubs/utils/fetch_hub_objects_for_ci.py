"""Stand-in for transformers' `utils/fetch_hub_objects_for_ci.py`, which the PyPI sdist does not ship and which
downloads test media from the Hub. Nothing can be downloaded here: an image URL becomes a local stand-in picture
(the same for every URL; the tests only need *an* image of ordinary size), any other URL stays as it is."""

import hashlib
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def url_to_local_path(url, *args, **kwargs):
    if not str(url).lower().endswith(IMAGE_SUFFIXES):
        return url
    path = Path(tempfile.gettempdir()) / f"peer-{hashlib.sha1(str(url).encode()).hexdigest()[:12]}{Path(url).suffix}"
    if not path.exists():
        rows, columns = np.mgrid[0:480, 0:640]
        pixels = np.stack([rows * 255 // 479, columns * 255 // 639, (rows + columns) % 256], axis=-1)
        Image.fromarray(pixels.astype(np.uint8)).save(path)
    return str(path)
