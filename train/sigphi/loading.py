"""Loading a SigPhi folder (a saved one or a Hub id) through the Auto classes, and reading its stored dtype."""

import os

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

import modeling  # noqa: F401  (registers SigPhi with the Auto classes)
from train.common.cli import InvalidInput


def load_sigphi(path: str, **kwargs):
    """(model, processor) from a SigPhi folder (a saved one or a Hub id), through the Auto classes.

    A path that holds no model is invalid input (a one-line error, exit status 2): transformers reports missing
    folders, files and Hub repos as `OSError`, and a folder without `config.json` as a confusing `ValueError`.
    """
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise InvalidInput(f"{path}: no config.json, so not a saved model folder")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, **kwargs)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    except OSError as error:
        reason = str(error).splitlines()[0]
        raise InvalidInput(f"{path}: neither a model folder nor a reachable Hub repo ({reason})") from None
    return model, processor


def checkpoint_dtype(path: str) -> torch.dtype | None:
    """The dtype a saved model folder (or Hub id) stores its weights in, read from its config; None if unknown."""
    from transformers import AutoConfig

    try:
        dtype = getattr(AutoConfig.from_pretrained(path, trust_remote_code=True), "dtype", None)
    except (OSError, ValueError):
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None
