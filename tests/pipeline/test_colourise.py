"""The colouriser's device path (``compose``: what runs on the GPU) gives the CPU path's pixels; run here
on CPU tensors, so it is checked on machines without a GPU too (tests/pipeline/test_gpu.py: on CUDA)."""
import numpy as np
import pytest
import torch

from pipehelp import StubBackend, frame_image
from pipeline.colourise import Colourise
from pipeline.frame import Frame


@pytest.mark.parametrize("view", ["overlay", "mask", "side-by-side"])
def test_the_device_path_matches_the_cpu_path(view):
    image = frame_image(5, 97, 63)                          # odd sizes: uneven nearest upsampling
    labels = torch.randint(0, 23, (32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    stub = StubBackend()
    frame = Frame(0, 0, 1, image.copy(), 0.0, labels=labels)
    Colourise(stub.palette, stub.class_names, "cpu", view=view, keep_labels=True).process(frame)
    colourise = Colourise(stub.palette, stub.class_names, "cpu", view=view, keep_labels=True, legend=True)
    colourise._lut_dev = torch.from_numpy(colourise.lut)    # what setup() uploads to a GPU
    out, full, counts = (t.numpy() for t in colourise.compose(torch.from_numpy(image), labels))
    assert np.array_equal(full, frame.labels_full)          # nearest, same pixel centres as OpenCV
    assert np.abs(out.astype(int) - frame.output.astype(int)).max() <= 1       # blend rounding
    assert np.array_equal(np.flatnonzero(counts), np.unique(labels.numpy()))
