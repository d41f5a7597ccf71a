"""`segpipe build` and `segpipe engines` on the CPU; help texts carry examples."""
import re
import subprocess
import sys

import pytest

from engine import cache
from pipeline.cli import build_parser, main


@pytest.mark.parametrize("command", ["export", "build", "engines"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert "examples:\n  segpipe " + command in capsys.readouterr().out


def test_help_does_not_load_torch():
    """Every command's --help answers without importing torch (which takes a second or more)."""
    for command in ("run", "live", "bench", "train", "eval", "export", "build", "engines"):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.cli", command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "examples:" in done.stdout
        assert "| numpy" in re.sub(r"\|\s+", "| ", done.stderr)                 # the import log is there
        assert not re.search(r"\|\s+torch$", done.stderr, re.MULTILINE), command


def test_build_then_list(tiny_ckpt, capsys):
    assert main(["build", "--weights", str(tiny_ckpt), "--backend", "onnxruntime", "--max-batch", "2"]) == 0
    assert "ready: onnxruntime fp32 on cpu at 96x128, batch 1..2" in capsys.readouterr().out
    assert main(["engines"]) == 0
    listing = capsys.readouterr().out
    assert "onnx-" in listing and "input_size=96x128" in listing and " ok " in listing
    assert main(["engines", "--json"]) == 0
    assert '"kind": "onnx"' in capsys.readouterr().out


def test_build_settles_the_cpu_choice_for_run_and_for_live(tiny_ckpt, capsys, monkeypatch, tmp_path):
    """run races at batch 4 and live at batch 1: `build` measures both, so neither races at start."""
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    assert main(["build", "--weights", str(tiny_ckpt), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ready: " in out and "live (batch 1): " in out
    batches = sorted(e["key"]["batch"] for e in cache.entries() if e["kind"] == "cpu-choice")
    assert batches == [1, 4]


def test_build_tensorrt_without_it_is_one_line(tiny_ckpt, capsys, monkeypatch):
    from engine import loader
    monkeypatch.setattr(loader, "tensorrt_available", lambda: False)
    assert main(["build", "--backend", "tensorrt", "--weights", str(tiny_ckpt)]) == 2
    assert capsys.readouterr().err == ("segpipe build: error: --backend tensorrt needs TensorRT, which is not installed: "
                                       "pip install 'segpipe[trt]' on a machine with an NVIDIA GPU\n")


def test_engines_clear(tmp_path, monkeypatch, capsys):
    from engine import cache
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    assert main(["engines"]) == 0 and "no cached engines" in capsys.readouterr().out
    cache.store({"kind": "onnx", "x": 1}, b"data", ".onnx")
    assert main(["engines", "--clear"]) == 0
    assert "removed 2 files" in capsys.readouterr().out and not any(tmp_path.iterdir())


def test_build_refuses_a_cache_it_cannot_write(tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "a-file" / "engines"))
    assert main(["build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segpipe build: error: cannot write the engine cache {tmp_path}/a-file/engines (") \
        and err.endswith("set SEGPIPE_CACHE to a folder you can write to\n")
