import os

import pytest
import torch

from train.checkpoint import make_checkpoint, save_checkpoint
from train.model import create_model

TINY_SIZE = (96, 128)


@pytest.fixture(scope="session", autouse=True)
def engine_cache(tmp_path_factory):
    """Every engine test writes its cache (ONNX exports, CPU race verdicts) to a private folder, shared by the session."""
    root = tmp_path_factory.mktemp("engine-cache")
    old = os.environ.get("SEGPIPE_CACHE")
    os.environ["SEGPIPE_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SEGPIPE_CACHE", None)
    else:
        os.environ["SEGPIPE_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A random-weight unet_tiny checkpoint at 96x128 (fast to export and run)."""
    torch.manual_seed(0)
    model = create_model("unet_tiny").eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(make_checkpoint(model, "unet_tiny", TINY_SIZE), path)
    return path
