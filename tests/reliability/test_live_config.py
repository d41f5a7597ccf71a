"""`segpipe live` defaults come from the live section of configs/pipeline.yaml; its flags override them."""
from __future__ import annotations

import pytest

import pipeline.live
from faultmedia import write_video
from pipeline.settings import CONFIG_FILE, LiveSettings, load_settings
from train.errors import InvalidInputError


@pytest.fixture
def captured(monkeypatch):
    calls = []

    def fake_run_live(src, settings, live, **kw):
        calls.append(live)
        raise SystemExit(0)

    monkeypatch.setattr(pipeline.live, "run_live", fake_run_live)
    return calls


def live(tmp_path, captured, *args, config: str | None = None):
    from pipeline.cli import main

    if config is not None:
        (tmp_path / "p.yaml").write_text(config)
        args = (*args, "--config", str(tmp_path / "p.yaml"))
    with pytest.raises(SystemExit):
        main(["live", str(write_video(tmp_path / "clip.mp4", 2)), "--record", str(tmp_path / "rec.mp4"), *args])
    return captured[-1]


def test_the_shipped_live_section_is_the_built_in_default():
    assert load_settings().live == LiveSettings() and "live:" in CONFIG_FILE.read_text()


def test_the_config_sets_live_defaults_and_flags_override_them(tmp_path, captured):
    cfg = "live: {batch: 3, jpeg_quality: 55, legend: false, reconnect_attempts: 2, hud: false}\n"
    got = live(tmp_path, captured, config=cfg)
    assert (got.batch, got.jpeg_quality, got.legend, got.reconnect_attempts, got.hud) == (3, 55, False, 2, False)
    got = live(tmp_path, captured, "--batch", "2", "--jpeg-quality", "90", "--reconnect-attempts", "5",
               config=cfg)
    assert (got.batch, got.jpeg_quality, got.reconnect_attempts, got.legend) == (2, 90, 5, False)
    got = live(tmp_path, captured, "--no-legend", "--no-hud")
    assert (got.legend, got.hud, got.batch) == (False, False, 1)


def test_a_bad_live_setting_is_one_line(tmp_path):
    (tmp_path / "p.yaml").write_text("live: {queue_capacity: 0}\n")
    with pytest.raises(InvalidInputError, match=r"p.yaml: queue capacity \(live.queue_capacity\) 0 must be >= 1"):
        load_settings(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text("live: {realtime: sometimes}\n")
    with pytest.raises(InvalidInputError, match="live.realtime is 'sometimes' .* must be bool"):
        load_settings(tmp_path / "p.yaml")


def test_a_bad_jpeg_quality_is_refused_before_the_model_loads(tmp_path, captured):
    from pipeline.cli import main

    code = main(["live", str(write_video(tmp_path / "clip.mp4", 2)), "--serve", "--jpeg-quality", "0"])
    assert code == 2 and captured == []          # refused while reading the flags: run_live never started
