"""Many inputs on one machine: expansion, output names, and a 2-worker batch that matches single runs."""
import json
import sys

import pytest
import yaml

from pipeline.batch import expand_inputs, format_summary, is_many, plan_jobs
from pipeline.cli import main
from train.errors import InputNotFoundError, InvalidInputError


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_inputs_from_paths_globs_folders_and_list_files(tmp_path, caplog):
    a, b = touch(tmp_path / "day1" / "a.mp4"), touch(tmp_path / "day1" / "b10.mp4")
    c = touch(tmp_path / "day1" / "b9.mp4")
    frames = tmp_path / "frames"
    for i in range(3):
        touch(frames / f"{i}.jpg")
    listing = tmp_path / "lists" / "drives.txt"
    listing.parent.mkdir()
    listing.write_text(f"# fleet export\n\n../day1/a.mp4\n{c}\nrtsp://cam/front\n")

    assert expand_inputs([str(tmp_path / "day1" / "*.mp4")]) == [str(a), str(c), str(b)]   # natural order
    assert expand_inputs([str(tmp_path / "day1")]) == [str(a), str(c), str(b)]             # a folder of videos
    touch(tmp_path / "day1" / "notes.txt")
    touch(tmp_path / "day1" / "a.srt")
    touch(tmp_path / "day1" / "day2" / "d.mp4")
    with caplog.at_level("INFO", logger="segpipe.batch"):
        assert expand_inputs([str(tmp_path / "day1")]) == [str(a), str(c), str(b)]         # its videos alone,
    assert "2 files left out, not videos (a.srt, notes.txt)" in caplog.text                # said
    assert f"1 subfolder not searched (a glob reaches into them: '{tmp_path / 'day1'}/**/*.mp4')" in caplog.text
    assert expand_inputs([str(frames)]) == [str(frames)]                                  # a folder of frames
    assert expand_inputs([str(frames / "*.jpg")]) == [str(frames / "*.jpg")]              # an image glob: one
    assert expand_inputs([f"@{listing}", str(a)]) == [str(a), str(c), "rtsp://cam/front"]  # duplicates dropped,
    assert f"{a} named more than once: segmented once" in caplog.text                     # and said
    assert expand_inputs([str(listing)]) == expand_inputs([f"@{listing}"])
    assert is_many([str(listing)]) and is_many([str(tmp_path / "day1" / "*.mp4")]) and is_many([str(a), str(b)])
    assert not is_many([str(a)]) and not is_many([str(frames / "*.jpg")]) and not is_many(["rtsp://cam/x"])
    with pytest.raises(InputNotFoundError, match="nothing matches"):
        expand_inputs([str(tmp_path / "*.mkv")])
    with pytest.raises(InputNotFoundError, match="one video path or URL per line"):
        expand_inputs(["@" + str(tmp_path / "missing.txt")])


def test_outputs_keep_base_names_and_folders_below_the_common_parent(tmp_path):
    front, rear = touch(tmp_path / "front" / "0001.mp4"), touch(tmp_path / "rear" / "0001.mp4")
    jobs = plan_jobs([str(front), str(rear), "http://host/v/clip.mp4?sig=1"], tmp_path / "seg", tmp_path / "m")
    assert [j.out for j in jobs] == [str(tmp_path / "seg" / "front" / "0001.mp4"),
                                     str(tmp_path / "seg" / "rear" / "0001.mp4"), str(tmp_path / "seg" / "clip.mp4")]
    assert jobs[0].masks == str(tmp_path / "m" / "front" / "0001")
    flat = plan_jobs([str(front), str(touch(tmp_path / "front" / "0002.mp4"))], tmp_path / "seg")
    assert [j.out for j in flat] == [str(tmp_path / "seg" / "0001.mp4"), str(tmp_path / "seg" / "0002.mp4")]
    assert plan_jobs(["-"], tmp_path / "seg")[0].out == str(tmp_path / "seg" / "stdin.mp4")   # standard input
    with pytest.raises(InvalidInputError, match="would both write"):
        plan_jobs(["http://a/x.mp4", "http://b/x.mp4"], tmp_path / "seg")
    with pytest.raises(InvalidInputError, match="--out-dir"):
        plan_jobs([str(front), str(rear)])


def test_batch_of_clips_matches_single_runs_and_reports_the_corrupt_one(tmp_path, clips, corrupt, config,
                                                                         reference, check_masks, capsys):
    out, masks, stats = tmp_path / "seg", tmp_path / "masks", tmp_path / "batch.json"
    inputs = [str(clips[0]), str(corrupt), str(clips[1]), str(clips[2])]
    code = main(["run", *inputs, "--out-dir", str(out), "--masks", str(masks), "--workers", "2",
                 "--config", str(config), "--stats", str(stats), "--no-progress"])
    assert code == 1                                                   # one file failed
    printed = capsys.readouterr().out
    assert "4 files: 3 done, 1 failed" in printed and f"FAILED {corrupt}" in printed

    summary = json.loads(stats.read_text())
    assert (summary["files"], summary["done"], summary["failed"], summary["workers"]) == (4, 3, 1, 2)
    assert summary["frames"] == 3 * 12 and summary["fps"] > 0
    (failure,) = summary["failures"]
    assert failure["src"] == str(corrupt) and corrupt.name in failure["error"]    # which, and why
    assert failure["attempts"] in (1, 2)     # retried once, unless the input itself is at fault
    assert [r["src"] for r in summary["results"]] == inputs             # in input order
    for clip, result in zip(clips, [summary["results"][i] for i in (0, 2, 3)]):
        assert result["status"] == "done" and result["frames"] == 12 and result["stats"]["dropped"] == 0
        assert result["out"] == str(out / f"{clip.stem}.mp4")
        assert "progress" not in result["stats"]["stages"]
        check_masks(masks / clip.stem, reference[clip.stem])            # frame for frame
    import av
    for clip in clips:
        with av.open(str(out / f"{clip.stem}.mp4")) as c:
            s = c.streams.video[0]
            assert sum(1 for _ in c.decode(s)) == 12 and (s.width, s.height) == (320, 240)
        assert (out / f"{clip.stem}.mp4.settings.yaml").exists()
    assert not (out / "corrupt.mp4").exists() or (out / "corrupt.mp4").stat().st_size == 0


def test_a_file_that_ends_early_in_a_batch_keeps_its_frames_and_statistics(tmp_path, clips, config, capsys):
    """Failed (it is incomplete), but its output plays with what decoded: the summary counts those frames
    and carries the file's statistics, as a run of it alone writes them."""
    import av
    from scale.conftest import cut_clip
    whole = cut_clip(tmp_path / "whole.mkv", 0, frames=60)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    stats = tmp_path / "batch.json"
    code = main(["run", str(clips[0]), str(cut), "--out-dir", str(tmp_path / "seg"), "--workers", "1",
                 "--config", str(config), "--stats", str(stats), "--no-progress"])
    assert code == 1 and "2 files: 1 done, 1 failed" in capsys.readouterr().out
    summary = json.loads(stats.read_text())
    ended = summary["results"][1]
    with av.open(ended["out"]) as c:
        written = sum(1 for _ in c.decode(video=0))
    assert ended["status"] == "failed" and "ended early" in ended["error"] and ended["attempts"] == 1
    assert 0 < ended["frames"] == written == ended["stats"]["frames"] < 60
    assert summary["frames"] == 12 + written


def test_a_portrait_file_in_a_batch_runs_the_model_turned_as_alone(tmp_path, config):
    """One worker, landscape - portrait - landscape: each file gets the engine a single run would use."""
    from scale.conftest import cut_clip

    names = ("wide", "tall", "wide2")
    clips = [cut_clip(tmp_path / f"{name}.mp4", 0, 3, (240, 320) if name == "tall" else (320, 240))
             for name in names]
    out = tmp_path / "seg"
    assert main(["run", *map(str, clips), "--out-dir", str(out), "--workers", "1", "--config", str(config),
                 "--no-progress"]) == 0
    sizes = [input_size(out / f"{name}.mp4") for name in names]
    assert main(["run", str(clips[1]), "--out", str(tmp_path / "alone.mp4"), "--config", str(config),
                 "--no-progress"]) == 0
    h, w = input_size(tmp_path / "alone.mp4").split("x")
    assert int(h) > int(w) and sizes == [f"{w}x{h}", f"{h}x{w}", f"{w}x{h}"]


def input_size(video) -> str:
    return yaml.safe_load(video.with_name(video.name + ".settings.yaml").read_text())["resolved"]["input_size"]


def test_batch_options_are_checked_before_any_work(tmp_path, clips, capsys):
    a, b = str(clips[0]), str(clips[1])
    assert main(["run", a, b, "--out", str(tmp_path / "o.mp4")]) == 2
    assert "--out-dir DIR" in capsys.readouterr().err
    assert main(["run", a, b]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert main(["run", a, b, "--out-dir", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers 0 must be >= 1" in capsys.readouterr().err
    assert main(["run", a, "--out", str(tmp_path / "o.mp4"), "--workers", "0"]) == 2   # said first, not --out's
    assert "--workers 0 must be >= 1" in capsys.readouterr().err
    # an engine that cannot be built stops the batch with the engine's own error, not N failures
    assert main(["run", a, b, "--out-dir", str(tmp_path), "--size", "100x100", "--no-progress"]) == 2
    assert "use --size" in capsys.readouterr().err


def test_ray_option_without_ray_says_how_to_install_it(tmp_path, clips, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)                        # import ray -> ImportError
    assert main(["run", str(clips[0]), str(clips[1]), "--out-dir", str(tmp_path), "--ray", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'segpipe[ray]'" in err


@pytest.mark.parametrize("resources,workers,backend,want", [
    ({"CPU": 2}, None, "auto", (2, {"num_cpus": 1})),                               # one actor per CPU
    ({"CPU": 8}, 2, "auto", (2, {"num_cpus": 4})),                                  # --workers: CPUs shared
    ({"CPU": 192, "GPU": 16}, None, "auto", (16, {"num_gpus": 1.0, "num_cpus": 12})),   # one per GPU
    ({"CPU": 192, "GPU": 16}, 64, "auto", (64, {"num_gpus": 0.25, "num_cpus": 3})),     # 4 per GPU
    ({"CPU": 192, "GPU": 16}, None, "onnxruntime", (192, {"num_cpus": 1})),          # a CPU backend
])
def test_ray_actors_follow_the_clusters_gpus_and_cpus(resources, workers, backend, want):
    from pipeline.cluster import plan_actors
    from pipeline.settings import load_settings

    per_node = {k: v / 2 for k, v in resources.items()} if "GPU" in resources else resources
    nodes = [{"Alive": True, "Resources": per_node}] * (2 if "GPU" in resources else 1)
    count, options, _ = plan_actors(resources, nodes, load_settings(infer={"backend": backend}), workers)
    assert (count, options) == want


def test_the_summary_counts_in_words():
    one = {"files": 1, "done": 0, "failed": 1, "frames": 1, "wall_s": 2.0, "fps": 0.5, "workers": 1,
           "mode": "local", "failures": [{"src": "a.mp4", "error": "cut", "attempts": 1}]}
    assert format_summary(one).splitlines() == [
        "1 file: 0 done, 1 failed; 1 frame in 2.0 s (0.5 fps aggregate) on 1 local worker",
        "  FAILED a.mp4: cut (1 attempt)"]
    two = {**one, "files": 2, "frames": 0, "workers": 2, "failures": [{**one["failures"][0], "attempts": 2}]}
    assert format_summary(two).splitlines()[0].startswith("2 files: 0 done, 1 failed; 0 frames in")
    assert format_summary(two).endswith("on 2 local workers\n  FAILED a.mp4: cut (2 attempts)")
