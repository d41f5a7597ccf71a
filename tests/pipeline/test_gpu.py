"""The GPU paths of preprocess and colourise agree with the CPU paths (skipped without CUDA)."""
import numpy as np
import pytest
import torch

from pipehelp import StubBackend, frame_image, probe, write_clip
from pipeline.colourise import Colourise
from pipeline.frame import Frame
from pipeline.preprocess import Preprocess
from pipeline.run import run

pytestmark = pytest.mark.gpu


def test_preprocess_and_colourise_match_the_cpu(tmp_path):
    cuda = torch.device("cuda")
    image = frame_image(5, 97, 63)                 # odd sizes on purpose
    palette = np.asarray(StubBackend().palette)
    names = StubBackend().class_names
    cpu_f, gpu_f = (Frame(0, 0, 1, image.copy(), 0.0) for _ in range(2))
    Preprocess((32, 48), "cpu").process(cpu_f)
    Preprocess((32, 48), cuda).process(gpu_f)
    assert gpu_f.tensor.device.type == "cuda" and gpu_f.image_dev is not None
    diff = (cpu_f.tensor.int() - gpu_f.tensor.cpu().int()).abs()
    assert diff.max() <= 1                                       # area resize: same up to rounding
    labels = torch.randint(0, 23, (32, 48), dtype=torch.uint8)
    for view in ("overlay", "mask", "side-by-side"):
        cpu_f.labels, gpu_f.labels = labels, labels.to(cuda)
        gpu_f.image_dev = torch.from_numpy(image).to(cuda)
        for f, dev in ((cpu_f, "cpu"), (gpu_f, cuda)):
            c = Colourise(palette, names, dev, view=view, keep_labels=True, legend=view == "overlay")
            c.setup()
            c.process(f)
        assert isinstance(gpu_f.output, np.ndarray) and gpu_f.output.shape == cpu_f.output.shape
        assert np.array_equal(gpu_f.labels_full, cpu_f.labels_full)     # nearest, same pixel centres
        assert np.abs(gpu_f.output.astype(int) - cpu_f.output.astype(int)).max() <= 1


def test_pipeline_on_the_gpu_round_trips(tmp_path, settings):
    class CudaStub(StubBackend):
        def __init__(self):
            super().__init__()
            self.device = torch.device("cuda")

        def __call__(self, frames):
            assert frames.device.type == "cuda"
            return super().__call__(frames)

    clip = write_clip(tmp_path / "clip.mp4", frames=12)
    stats = run(clip, tmp_path / "seg.mp4", settings, backend=CudaStub(), masks=tmp_path / "m")
    assert stats["frames"] == 12 == probe(tmp_path / "seg.mp4")["frames"] and stats["device"] == "cuda"
