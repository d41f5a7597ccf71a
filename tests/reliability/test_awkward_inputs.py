"""Awkward but valid inputs work and keep every frame: a still image, odd and very large sizes,
grayscale and 10-bit, variable frame rate, MJPEG, rotated phone video, a single frame.

Each is a round trip through `segpipe run`: exit 0, then the output is reopened (frame count, size,
timestamps) and the label PNGs say which input frame each output frame came from.
"""
from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from faultmedia import ROAD, decode_index, frame_image, probe, write_video


def masks_in_order(masks):
    return [decode_index(cv2.imread(str(p), cv2.IMREAD_UNCHANGED)) for p in sorted(masks.iterdir())]


def segment(cli, tmp_path, src, *args):
    out, masks = tmp_path / "seg.mp4", tmp_path / "masks"
    code, _, err, _ = cli("run", src, "--out", out, "--masks", masks, *args)
    assert code == 0, err
    return probe(out), masks


@pytest.mark.parametrize("name, flags", [("still.png", cv2.IMREAD_COLOR), ("still.jpg", cv2.IMREAD_COLOR),
                                         ("gray.png", cv2.IMREAD_GRAYSCALE), ("deep.png", -1)])
def test_a_single_still_image_is_one_output_frame(tmp_path, cli, name, flags):
    img = cv2.cvtColor(frame_image(5, 96, 64), cv2.COLOR_RGB2BGR)
    if name == "gray.png":
        img = img[..., 2]                                   # the red bands, as gray
    if name == "deep.png":
        img = img.astype(np.uint16) * 257                   # 16-bit PNG
    cv2.imwrite(str(tmp_path / name), img)
    got, masks = segment(cli, tmp_path, tmp_path / name)
    assert got["frames"] == 1 and (got["width"], got["height"]) == (96, 64)
    assert masks_in_order(masks) == [5]


@pytest.mark.parametrize("codec, container, pix_fmt", [("libx264", "mp4", "yuv444p"), ("ffv1", "mkv", "yuv420p")])
def test_an_odd_size_is_padded_to_even_and_masks_keep_the_input_size(tmp_path, cli, codec, container, pix_fmt):
    src = write_video(tmp_path / f"odd.{container}", 4, 641, 479, codec=codec, pix_fmt=pix_fmt)
    got, masks = segment(cli, tmp_path, src)
    assert got["frames"] == 4 and (got["width"], got["height"]) == (642, 480)   # yuv420p needs even sides
    assert cv2.imread(str(masks / "000000.png"), cv2.IMREAD_UNCHANGED).shape == (479, 641)
    assert masks_in_order(masks) == [0, 1, 2, 3]


def test_a_4k_video(tmp_path, cli):
    src = write_video(tmp_path / "uhd.mp4", 3, 3840, 2160)
    got, masks = segment(cli, tmp_path, src)
    assert got["frames"] == 3 and (got["width"], got["height"]) == (3840, 2160)
    assert masks_in_order(masks) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["gray", "10-bit", "mjpeg"])
def test_grayscale_10_bit_and_mjpeg_sources(tmp_path, cli, kind):
    src = {"gray": lambda: write_video(tmp_path / "gray.mkv", 6, codec="ffv1", pix_fmt="gray", gray=True),
           "10-bit": lambda: write_video(tmp_path / "deep.mp4", 6, pix_fmt="yuv420p10le"),
           "mjpeg": lambda: write_video(tmp_path / "cam.avi", 6, codec="mjpeg", pix_fmt="yuvj420p")}[kind]()
    got, masks = segment(cli, tmp_path, src)
    assert got["frames"] == 6 and (got["width"], got["height"]) == (96, 64)
    assert masks_in_order(masks) == list(range(6))


@pytest.mark.parametrize("container", ["mkv", "mp4"])
def test_variable_frame_rate_timestamps_follow_the_input(tmp_path, cli, container):
    ms = [0, 50, 100, 300, 350, 700, 710, 720, 1000, 1500]           # bursts and pauses
    src = write_video(tmp_path / f"vfr.{container}", len(ms), pts=ms, time_base=Fraction(1, 1000))
    got, masks = segment(cli, tmp_path, src)
    assert got["frames"] == len(ms)
    assert got["seconds"] == pytest.approx([t / 1000 for t in ms], abs=1e-3)
    assert masks_in_order(masks) == list(range(len(ms)))


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_rotated_video_is_turned_upright_as_players_show_it(tmp_path, cli, rotation):
    """A phone stores portrait video landscape with a display matrix; the output is upright, has no
    rotation of its own, and the masks are in the upright frame."""
    src = write_video(tmp_path / "phone.mp4", 3, 96, 64, rotation=rotation)
    got, masks = segment(cli, tmp_path, src)
    k = rotation // 90 % 4
    w, h = (64, 96) if k % 2 else (96, 64)
    assert got["frames"] == 3 and (got["width"], got["height"]) == (w, h)
    labels = cv2.imread(str(masks / "000002.png"), cv2.IMREAD_UNCHANGED)
    upright = np.rot90(frame_image(2, 96, 64)[..., 0] > 127, k)        # counter-clockwise, as the matrix says
    assert labels.shape == upright.shape == (h, w)
    assert np.mean((labels == ROAD) == upright) > 0.95


def test_a_one_frame_video(tmp_path, cli):
    got, masks = segment(cli, tmp_path, write_video(tmp_path / "one.mp4", 1))
    assert got["frames"] == 1 and masks_in_order(masks) == [0]
