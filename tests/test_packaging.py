"""What a plain (non-editable) install gets: the wheel must carry the files segpipe finds beside its code."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {".git", ".whl", ".gpu", "runs", "build", "out", ".benchmarks", ".pytest_cache", ".ruff_cache"}


def test_the_wheel_carries_configs_weights_and_the_web_page(tmp_path):
    src = tmp_path / "src"          # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, ignore=lambda d, names: [n for n in names if n in LOCAL or n.endswith(".egg-info")])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    names = set(zipfile.ZipFile(next((tmp_path / "dist").glob("segpipe-*.whl"))).namelist())
    shipped = {f"configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert {"configs/unet_carla.yaml", "configs/pipeline.yaml"} <= shipped <= names
    assert {"train/weights/unet_carla.pt", "pipeline/cli.py"} <= names
    assert any(n.startswith("pipeline/web/") for n in names) and any(n.startswith("engine/data/") for n in names)
