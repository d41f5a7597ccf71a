"""The GPU preprocess (``resize``, run here on CPU tensors) gives cv2.resize's pixels, as in training."""
import cv2
import pytest
import torch

from pipeline.preprocess import CV2_INTERP, resize


@pytest.mark.parametrize("interpolation", ["area", "bilinear"])
@pytest.mark.parametrize("source, size", [((480, 640), (192, 256)), ((480, 640), (144, 192)),
                                          ((720, 1280), (192, 256)), ((97, 63), (32, 48)),
                                          ((120, 160), (192, 256)), ((100, 150), (192, 256))])
def test_resize_gives_cv2s_pixels(carla_dir, interpolation, source, size):
    frame = cv2.imread(str(sorted((carla_dir / "CameraRGB").iterdir())[0]))
    image = cv2.resize(frame, source[::-1], interpolation=cv2.INTER_LINEAR)
    want = cv2.resize(image, size[::-1], interpolation=CV2_INTERP[interpolation])
    got = resize(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0), size, interpolation)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (1, 3, *size)
    diff = (got[0].permute(1, 2, 0).int() - torch.from_numpy(want).int()).abs()
    assert diff.max() <= 1 and diff.float().mean() < 0.2     # rounding only (cv2 uses fixed point)


def test_resize_of_the_right_size_is_the_frame_itself():
    x = torch.zeros(1, 3, 4, 6, dtype=torch.uint8)
    assert resize(x, (4, 6)) is x
