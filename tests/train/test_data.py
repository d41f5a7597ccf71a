import shutil

import cv2
import numpy as np
import pytest
import torch

from train.data import FrameSet, augment_batch, find_pairs, mask_ids, read_mask, split_by_runs
from train.errors import DatasetError, InputNotFoundError


def test_reader_pairs_real_frames(carla_dir):
    pairs = find_pairs(carla_dir)
    assert len(pairs) == 12
    assert [p.number for p in pairs[:3]] == [2106, 2107, 2108]
    frames = FrameSet(pairs[:3], (96, 128))
    assert frames.images.shape == (3, 3, 96, 128) and frames.images.dtype == torch.uint8
    assert frames.masks.shape == (3, 96, 128)
    ids = set(frames.masks.unique().tolist())
    assert {7, 13} <= ids and max(ids) <= 22  # road and sky in every driving frame


def test_mask_red_channel_and_single_channel_agree(carla_dir, tmp_path):
    path = carla_dir / "CameraMask" / "002106.png"
    rgba = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert rgba.shape[2] == 4 and rgba[..., :2].max() == 0  # ids only in red (BGR index 2)
    single = tmp_path / "single.png"
    cv2.imwrite(str(single), rgba[..., 2])
    np.testing.assert_array_equal(read_mask(path), read_mask(single))


def test_any_image_extension(carla_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(carla_dir, root)
    for jpg in (root / "CameraRGB").glob("*.jpg"):
        cv2.imwrite(str(jpg.with_suffix(".png")), cv2.imread(str(jpg)))
        jpg.unlink()
    assert len(find_pairs(root)) == 12


def test_split_by_runs_never_splits_a_run(carla_dir):
    pairs = find_pairs(carla_dir)
    train, val = split_by_runs(pairs, val_every=4)
    assert [p.number for p in val] == [6882, 6883, 6884]
    assert len(train) == 9
    assert split_by_runs(pairs, val_every=4) == (train, val)  # deterministic


def test_split_gap_joins_near_runs():
    from train.data import FramePair
    pairs = [FramePair(str(n), n, None, None) for n in [1, 2, 5, 100, 101, 300, 400, 500, 600]]
    train, val = split_by_runs(pairs, val_every=3, max_gap=10, same_scene=0)
    # runs: {1,2,5} {100,101} {300} {400} {500} {600}; every 3rd from index 1 is validation
    assert [p.number for p in val] == [100, 101, 500]


def test_split_joins_runs_that_film_the_same_scene(carla_dir, tmp_path):
    """A car stopped across a gap in the frame numbers: the frame after the gap is a near-copy of the one
    before it, so both runs are one, and that scene is not in training and validation both."""
    root = tmp_path / "data"
    shutil.copytree(carla_dir, root)
    last = find_pairs(root)[-1]
    for folder, src in (("CameraRGB", last.image), ("CameraMask", last.mask)):
        shutil.copy(src, root / folder / f"{last.number + 500:06d}{src.suffix}")
    pairs = find_pairs(root)
    assert len(split_by_runs(pairs, val_every=2, same_scene=0)[1]) != len(split_by_runs(pairs, val_every=2)[1])
    for train, val in (split_by_runs(pairs, val_every=2), split_by_runs(pairs, val_every=3)):
        sides = {p.number: "val" if p in val else "train" for p in pairs}
        assert sides[last.number] == sides[last.number + 500]


def test_missing_folder(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        find_pairs(tmp_path / "nope")
    tmp_path.joinpath("CameraRGB").mkdir()
    with pytest.raises(DatasetError, match="no CameraMask/ folder"):
        find_pairs(tmp_path)


def test_mask_without_image(carla_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(carla_dir, root)
    (root / "CameraRGB" / "002107.jpg").unlink()
    with pytest.raises(DatasetError, match="mask 002107.png has no image"):
        find_pairs(root)


def test_wrong_channel_count():
    # OpenCV cannot even write such a PNG; TIFF and friends can hold it.
    with pytest.raises(DatasetError, match="m.tif has 2 channels: expected 1"):
        mask_ids(np.zeros((4, 4, 2), np.uint8), "m.tif")


def test_colour_coded_mask_is_explained(tmp_path):
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), np.full((4, 4, 3), (180, 130, 70), np.uint8))  # sky in the Cityscapes palette
    with pytest.raises(DatasetError, match="class id 70.*red channel"):
        read_mask(path)


@pytest.mark.parametrize("value, hint", [
    (40, r"m.png holds class id 40, beyond the 23 classes \(0-22\): give the model more classes "
         r"\(model_options: \{num_classes: 41\}\)$"),                     # single-channel: no red-channel talk
    (254, r"class id 254, beyond"),
])
def test_class_id_out_of_range(tmp_path, value, hint):
    path = tmp_path / "m.png"
    cv2.imwrite(str(path), np.full((4, 4), value, np.uint8))
    with pytest.raises(DatasetError, match=hint):
        read_mask(path)


def test_one_frame_twice_under_two_extensions_is_refused(carla_dir, tmp_path):
    shutil.copytree(carla_dir, tmp_path / "d")
    first = sorted((tmp_path / "d" / "CameraRGB").iterdir())[0]
    cv2.imwrite(str(first.with_suffix(".png")), cv2.imread(str(first)))
    with pytest.raises(DatasetError, match=rf"{first.name} and {first.stem}.png in .* are one frame twice: keep one"):
        find_pairs(tmp_path / "d")


def test_augment_keeps_masks_nearest_and_sky_up(carla_dir):
    frames = FrameSet(find_pairs(carla_dir)[:4], (96, 128), scale=1.25)
    g = torch.Generator().manual_seed(0)
    images, masks = augment_batch(frames.images, frames.masks, (96, 128), g)
    assert images.shape == (4, 3, 96, 128) and masks.shape == (4, 96, 128)
    assert set(masks.unique().tolist()) <= set(frames.masks.unique().tolist())  # no blended ids
    sky = 13
    top, bottom = (masks[:, :20] == sky).float().mean(), (masks[:, -20:] == sky).float().mean()
    assert top > bottom  # no vertical flips


def test_crops_are_taken_at_the_model_scale(carla_dir):
    frames = FrameSet(find_pairs(carla_dir)[:3], (96, 128), scale=1.0)
    g = torch.Generator().manual_seed(1)
    images, masks = augment_batch(frames.images, frames.masks, (96, 128), g, crop=(48, 64), zoom=(1.0, 1.0))
    assert images.shape == (3, 3, 48, 64) and masks.shape == (3, 48, 64)
    for full, piece in zip(frames.masks, masks):         # each crop is a window of the frame, maybe mirrored
        windows = full.unfold(0, 48, 1).unfold(1, 64, 1)  # (49, 65, 48, 64)
        assert any((windows == p).all(-1).all(-1).any() for p in (piece, piece.flip(-1)))


def test_zooming_out_fits_the_cached_frame(carla_dir):
    frames = FrameSet(find_pairs(carla_dir)[:2], (96, 128), scale=1.25)
    images, masks = augment_batch(frames.images, frames.masks, (96, 128), torch.Generator().manual_seed(0),
                                  crop=(64, 96), zoom=(0.5, 0.5))   # asks for more than the frame: clamped
    assert images.shape == (2, 3, 64, 96) and set(masks.unique().tolist()) <= set(frames.masks.unique().tolist())


def column_pair(folder, height=48, width=80):
    """One frame whose every column is its own class (1..22, repeating) in the mask, and whose red channel
    says the column's class too: labels and pixels can be matched column by column after any resize."""
    (folder / "CameraRGB").mkdir(parents=True)
    (folder / "CameraMask").mkdir()
    ids = (np.arange(width) % 22 + 1).astype(np.uint8)
    mask = np.zeros((height, width, 4), np.uint8)
    mask[..., 2], mask[..., 3] = ids, 255                      # BGRA on disk: the id in the red channel
    cv2.imwrite(str(folder / "CameraMask" / "000001.png"), mask)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 2] = ids * 10                                    # red (BGR index 2) = 10 x the column's id
    cv2.imwrite(str(folder / "CameraRGB" / "000001.png"), image)
    return ids


def test_resized_masks_take_the_label_under_each_pixel_centre(tmp_path):
    """80 -> 24 columns (a scale of 3.33, as 640 -> 192): output column x is source column
    floor((x + 0.5) * 80 / 24), the one the area-resized image is centred on, not floor(x * 80 / 24)."""
    ids = column_pair(tmp_path)
    frames = FrameSet(find_pairs(tmp_path), (16, 24))
    centres = np.floor((np.arange(24) + 0.5) * 80 / 24).astype(int)
    assert (frames.masks[0] == torch.from_numpy(ids[centres])).all()
    larger = FrameSet(find_pairs(tmp_path), (16, 24), scale=1.5)        # cached larger, scored at the size
    (_, masks), = larger.batches(1, augment=False)
    cached = ids[np.floor((np.arange(36) + 0.5) * 80 / 36).astype(int)]
    assert (masks[0, 0] == torch.from_numpy(cached[np.floor((np.arange(24) + 0.5) * 36 / 24).astype(int)])).all()


def test_augmented_masks_are_centred_too(tmp_path):
    """A whole cached frame (zoom 1) resized 36 -> 24 columns: the label of column x is cached column
    floor((x + 0.5) * 1.5), mirrored with the image when flipped."""
    column_pair(tmp_path)
    frames = FrameSet(find_pairs(tmp_path), (16, 24), scale=1.5)          # cached at 24x36
    _, masks = augment_batch(frames.images.repeat(8, 1, 1, 1), frames.masks.repeat(8, 1, 1), (16, 24),
                             torch.Generator().manual_seed(0), zoom=(1.0, 1.0))
    want = frames.masks[0, 0][np.floor((np.arange(24) + 0.5) * 1.5).astype(int)]
    flipped = [bool((m == want.flip(0)).all()) for m in masks]
    assert all(flipped[i] or (m == want).all() for i, m in enumerate(masks))
    assert 0 < sum(flipped) < len(masks)                                  # both ways were drawn


def test_255_marks_pixels_to_ignore(tmp_path):
    """Cityscapes-style masks: 255 is void, read as it is (the loss and the scores leave it out)."""
    path = tmp_path / "m.png"
    mask = np.full((4, 4), 7, np.uint8)
    mask[:2] = 255
    cv2.imwrite(str(path), mask)
    assert np.array_equal(read_mask(path), mask)
    from train.data import class_frequencies
    freq = class_frequencies(torch.from_numpy(mask)[None], 23)
    assert len(freq) == 23 and freq[7] == 1.0                        # shares of the labelled pixels
