"""Round trips, as in PyAV's own tests: write a clip, run the pipeline, reopen the output and check it."""
import json

import cv2
import numpy as np
import pytest
import yaml

from pipehelp import ROAD, SKY, StubBackend, decode_index, frame_image, probe, write_clip
from pipeline.run import run, settings_path
from pipeline.image_writer import ImageWriter
from train.errors import InvalidInputError, MediaError, StageError


def test_frames_size_rate_and_timestamps_survive(tmp_path, clip, stub, settings):
    out = tmp_path / "seg.mp4"
    stats = run(clip, out, settings, backend=stub)
    src, got = probe(clip), probe(out)
    assert got["frames"] == src["frames"] == stats["frames"] == 12
    assert (got["width"], got["height"]) == (src["width"], src["height"])
    assert got["rate"] == src["rate"] == 25
    assert got["time_base"] == src["time_base"]
    assert got["pts"] == src["pts"]
    assert got["codec"] == "h264"
    assert stats["dropped"] == 0


def test_masks_are_lossless_in_order_and_at_input_resolution(tmp_path, settings):
    stub = StubBackend(delay_s=0.03)              # a slow model: frames queue up, batches fill
    clip = write_clip(tmp_path / "clip.mp4", frames=20)
    masks = tmp_path / "masks"
    run(clip, tmp_path / "seg.mp4", settings.override(infer={"batch": 3}), masks=masks, backend=stub)
    files = sorted(masks.iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(20)]
    for i, f in enumerate(files):
        labels = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint8 and labels.shape == (64, 96)          # one channel, input size
        assert set(np.unique(labels)) <= {ROAD, SKY}
        assert decode_index(labels) == i                                        # frame i, in order
    assert max(stub.batches) == 3 and sum(stub.batches) == 20                   # batched inference


def test_odd_size_is_padded_to_even_for_yuv420p(tmp_path, stub, settings, caplog):
    clip = tmp_path / "odd"
    clip.mkdir()
    for i in range(5):   # image folders can have odd sizes, which H.264 4:2:0 cannot
        img = np.full((61, 83, 3), 40 * i, np.uint8)
        cv2.imwrite(str(clip / f"f{i}.png"), img)
    out = tmp_path / "odd.mp4"
    stats = run(clip, out, settings, masks=tmp_path / "m", backend=stub)
    got = probe(out)
    assert (got["width"], got["height"], got["frames"]) == (84, 62, 5) and stats["frames"] == 5
    assert cv2.imread(str(tmp_path / "m" / "f0.png"), cv2.IMREAD_UNCHANGED).shape == (61, 83)
    assert f"{out} is 84x62, not 83x61: yuv420p needs even sides" in caplog.text      # said, not silent
    assert "output_size: 84x62" in settings_path(out).read_text()                       # what the file holds


@pytest.mark.parametrize("view,width", [("mask", 96), ("side-by-side", 192), ("overlay", 96)])
def test_views(tmp_path, clip, stub, settings, view, width):
    out = tmp_path / f"{view}.mp4"
    run(clip, out, settings.override(colourise={"view": view, "legend": view == "overlay"}), backend=stub)
    got = probe(out)
    assert (got["width"], got["height"], got["frames"]) == (width, 64, 12)


def test_mask_view_shows_the_palette(tmp_path, clip, stub, settings):
    out = tmp_path / "mask.mkv"
    run(clip, out, settings.override(colourise={"view": "mask"}, encode={"crf": 0}), backend=stub)
    import av
    with av.open(str(out)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    sky = np.array([70, 130, 180])
    assert np.abs(first[32, 90].astype(int) - sky).max() < 12       # frame 0: no bits set, all sky


def test_other_codec_and_container(tmp_path, clip, stub, settings):
    out = tmp_path / "seg.mkv"
    run(clip, out, settings.override(encode={"codec": "mpeg4"}), backend=stub)
    got = probe(out)
    assert got["codec"] == "mpeg4" and got["frames"] == 12


def test_settings_used_are_written_beside_the_output(tmp_path, clip, stub, settings):
    import yaml
    out = tmp_path / "seg.mp4"
    run(clip, out, settings.override(colourise={"alpha": 0.3}, infer={"batch": 2}), backend=stub,
        stats_path=tmp_path / "s.json")
    saved = yaml.safe_load(settings_path(out).read_text())
    assert saved["colourise"]["alpha"] == 0.3 and saved["infer"]["batch"] == 2
    assert saved["resolved"]["backend"] == "stub"
    assert saved["resolved"]["queues"]["decode->preprocess"].startswith("block")
    stats = json.loads((tmp_path / "s.json").read_text())
    assert set(stats) == {"frames", "dropped", "dropped_by", "damaged", "fps", "wall_s", "backend", "device",
                          "precision", "stages", "latency_ms", "audio", "exit"}
    assert stats["dropped_by"] == {"queues": 0, "undecodable": 0} and stats["exit"] == "done"
    assert set(stats["stages"]) == {"decode", "preprocess", "infer", "colourise", "encode"}
    assert all(set(v) == {"busy_s", "p50_ms", "p95_ms"} for v in stats["stages"].values())
    assert set(stats["latency_ms"]) == {"p50", "p95", "p99"} and stats["latency_ms"]["p50"] > 0
    assert stats["frames"] == 12 and stats["backend"] == "stub" and stats["device"] == "cpu"


def test_max_frames(tmp_path, clip, stub, settings):
    stats = run(clip, tmp_path / "seg.mp4", settings.override(decode={"max_frames": 7}), backend=stub)
    assert stats["frames"] == 7 == probe(tmp_path / "seg.mp4")["frames"]


def top_level_boxes(path) -> list[str]:
    """The MP4 boxes a player reads first (ftyp, moov, mdat, moof, ...), in file order."""
    data, boxes, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8].decode("latin-1")
        size = int.from_bytes(data[at + 8:at + 16], "big") if size == 1 else size or len(data) - at
        boxes.append(kind)
        at += size
    return boxes


def test_a_finished_mp4_is_an_ordinary_one(tmp_path, clip, stub, settings):
    """Written in fragments (crash-safe), finalised as a plain MP4: one mdat, one index, no fragments."""
    out = tmp_path / "seg.mp4"
    run(clip, out, settings, backend=stub)
    boxes = top_level_boxes(out)
    assert boxes.count("moov") == 1 and boxes.count("mdat") == 1 and "moof" not in boxes, boxes
    assert probe(out)["frames"] == 12


def test_an_ffmpeg_without_fragmented_mp4_still_writes_one_with_a_warning(tmp_path, clip, stub, settings,
                                                                         monkeypatch, caplog):
    """FFmpeg before 7.1 has no hybrid_fragmented flag: the muxer rejects it, the probe sees that."""
    import pipeline.encode
    monkeypatch.setattr(pipeline.encode, "fragmented_options", lambda s: {"movflags": "+no_such_flag"})
    pipeline.encode.warn_unfragmented.cache_clear()                  # it warns once per process
    out = tmp_path / "seg.mp4"
    run(clip, out, settings, backend=stub)
    assert probe(out)["frames"] == 12
    assert "cannot write .mp4 in fragments (needs 7.1+" in caplog.text


def test_hevc_mp4_is_written_in_one_piece_and_tagged_for_apple_players(tmp_path, clip, stub, settings):
    """FFmpeg 8.1 cannot mux fragmented HEVC from a flat first frame (and crashes closing such a file):
    only H.264 is written in fragments. QuickTime and Safari play HEVC in MP4 only when it is tagged hvc1."""
    import av
    out = tmp_path / "seg.mp4"
    run(clip, out, settings.override(encode={"codec": "libx265", "options": {"x265-params": "log-level=none"}}),
        backend=stub)
    got = probe(out)
    assert got["codec"] == "hevc" and got["frames"] == 12
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"


def test_webm_picks_vp9_in_real_time_mode(tmp_path, clip, stub, settings):
    """.webm cannot hold H.264: the default codec (auto) is VP9 there, with libvpx's real-time options."""
    out = tmp_path / "seg.webm"
    run(clip, out, settings, backend=stub)
    got = probe(out)
    assert got["codec"] == "vp9" and got["frames"] == 12
    used = yaml.safe_load(settings_path(out).read_text())
    assert used["encode"]["codec"] == "auto" and used["resolved"]["codec"] == "libvpx-vp9"
    from fractions import Fraction

    from pipeline.encode import Encode
    from pipeline.frame import Frame

    enc = Encode(tmp_path / "lag.webm", 64, 48, Fraction(20), Fraction(1, 20))
    enc.setup()
    image = np.zeros((48, 64, 3), np.uint8)
    enc.process(Frame(0, 0, Fraction(1, 20), image, 0.0, output=image))
    assert enc.packets == 1                      # out at once: no look-ahead queue (libvpx holds 25 by default)
    enc.teardown()


def test_masks_from_an_earlier_run_are_pointed_out(tmp_path, clip, stub, settings, caplog):
    masks = tmp_path / "m"
    run(clip, None, settings, masks=masks, backend=stub)
    assert "already holds" not in caplog.text
    run(clip, None, settings.override(decode={"max_frames": 3}), masks=masks, backend=stub)
    assert f"--masks {masks} already holds 12 PNGs" in caplog.text and len(list(masks.glob("*.png"))) == 12


def test_one_image_in_one_image_out(tmp_path, stub, settings):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.cvtColor(frame_image(5, 96, 64), cv2.COLOR_RGB2BGR))
    out, masks = tmp_path / "seg.png", tmp_path / "masks"
    stats = run(photo, out, settings.override(colourise={"view": "mask"}), masks=masks, backend=stub)
    labels = cv2.imread(str(masks / "photo.png"), cv2.IMREAD_UNCHANGED)
    assert decode_index(labels) == 5
    written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)            # lossless: exactly the palette
    assert np.array_equal(written, stub.palette[labels])
    assert stats["frames"] == 1 and stats["exit"] == "done" and "image" in stats["stages"]
    assert not list(tmp_path.glob(".*part*"))                                  # no temporary file left


def test_a_video_gives_its_first_frame_as_an_image_with_frames_1(tmp_path, clip, stub, settings):
    out = tmp_path / "first.png"
    run(clip, out, settings.override(decode={"max_frames": 1}, colourise={"view": "mask"}), backend=stub)
    written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    labels = np.where((written == stub.palette[ROAD]).all(-1), ROAD, SKY).astype(np.uint8)
    assert np.array_equal(written, stub.palette[labels]) and decode_index(labels) == 0    # frame 0, exactly
    with pytest.raises(InvalidInputError, match=r"is one image, but .*clip.mp4 has 12 frames: .*--frames 1"):
        run(clip, tmp_path / "all.png", settings, backend=stub)
    assert not (tmp_path / "all.png").exists()


def test_an_image_from_an_earlier_run_does_not_outlive_a_failed_one(tmp_path, stub, settings):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), frame_image(3, 96, 64))
    out = tmp_path / "seg.png"
    out.write_bytes(b"an earlier run's image")
    with pytest.raises(StageError, match="stub backend exploded") as failed:
        run(photo, out, settings, backend=StubBackend(fail_at=1))
    assert f"nothing was written to {out}" in str(failed.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]          # no image, settings or part


def test_the_image_writer_holds_one_frame(tmp_path):
    from pipeline.frame import Frame
    writer = ImageWriter(tmp_path / "seg.jpg", 1, "photo.jpg")
    frame = Frame(0, 0, 1, np.zeros((8, 8, 3), np.uint8), 0.0, output=np.zeros((8, 8, 3), np.uint8))
    writer.setup()
    writer.process(frame)
    with pytest.raises(MediaError, match="more than one frame came, but --out .*seg.jpg holds one image"):
        writer.process(frame)
    assert cv2.imread(str(tmp_path / "seg.jpg")).shape == (8, 8, 3)


def test_a_stop_says_how_many_masks_when_the_video_has_fewer(tmp_path):
    """The masks stage runs before the encoder: after a stop it may hold a frame or two more than the video."""
    from pipeline.run import _closed
    out = tmp_path / "seg.mp4"
    out.write_bytes(b"")
    assert _closed(out, tmp_path / "m", 166, 166) == (f"{out} is complete with the 166 frames done; their masks are "
                                                      f"in {tmp_path / 'm'}")
    assert _closed(out, tmp_path / "m", 166, 167).endswith(f"; 167 masks of this run are in {tmp_path / 'm'}")
    assert _closed(None, tmp_path / "m", 5, 0) == "nothing was written"
