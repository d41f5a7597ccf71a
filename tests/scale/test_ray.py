"""The same batch on a local Ray cluster started here (2 CPUs, no dashboard): one actor per CPU,
outputs identical to single-process runs, a corrupt input reported (after its retry) while the others
finish."""
import json
import socket

import pytest

ray = pytest.importorskip("ray")

from pipeline.batch import expand_inputs, plan_jobs
from pipeline.cli import main
from pipeline.cluster import connect, run_cluster
from pipeline.settings import load_settings
from train.errors import ClusterUnavailableError


def test_no_cluster_at_the_address_is_one_line_at_once(tmp_path, clips, capsys):
    with socket.socket() as s:                      # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["run", str(clips[0]), str(clips[1]), "--out-dir", str(tmp_path), "--no-progress",
                 f"--ray=127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


def test_no_cluster_for_auto_says_how_to_start_one():
    class NoCluster:
        def init(self, **kwargs):
            raise ConnectionError("Could not find any running Ray instance.")

    with pytest.raises(ClusterUnavailableError, match="no Ray cluster running on this machine or in RAY_ADDRESS"):
        connect(NoCluster(), "auto")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_ray_actors_segment_clips_like_single_runs_and_report_the_corrupt_one(
        tmp_path, cluster, clips, corrupt, config, reference, check_masks):
    inputs = expand_inputs([str(clips[0]), str(clips[1]), str(corrupt), str(clips[2])])
    jobs = plan_jobs(inputs, tmp_path / "seg", tmp_path / "masks")
    summary = run_cluster(jobs, load_settings(config), progress=True)

    assert (summary["mode"], summary["workers"]) == ("ray", 2)           # one actor per CPU
    assert (summary["files"], summary["done"], summary["failed"]) == (4, 3, 1)
    assert summary["frames"] == 36 and summary["fps"] > 0
    (failure,) = summary["failures"]
    assert failure["src"] == str(corrupt) and corrupt.name in failure["error"] and failure["attempts"] in (1, 2)
    done = [r for r in summary["results"] if r["status"] == "done"]
    assert {r["worker"] for r in summary["results"]} <= {"ray-0", "ray-1"}
    for clip, result in zip(clips, done):
        assert result["src"] == str(clip) and result["frames"] == 12
        check_masks(tmp_path / "masks" / clip.stem, reference[clip.stem])   # frame for frame


def test_cli_ray_on_the_running_cluster_writes_the_summary(tmp_path, cluster, clips, config, capsys):
    listing = tmp_path / "drives.txt"
    listing.write_text("\n".join(str(c) for c in clips[:2]) + "\n")
    stats = tmp_path / "summary.json"
    code = main(["run", f"@{listing}", "--out-dir", str(tmp_path / "seg"), "--ray", "--config", str(config),
                 "--stats", str(stats), "--no-progress"])
    assert code == 0
    assert "2 files: 2 done, 0 failed; 24 frames" in capsys.readouterr().out
    summary = json.loads(stats.read_text())
    assert summary["mode"] == "ray" and summary["failures"] == []
    assert all((tmp_path / "seg" / f"{c.stem}.mp4").stat().st_size > 0 for c in clips[:2])
