"""Output paths the user names: a URL is refused before any folder named after it is made."""
import os

import pytest

from train.errors import InvalidInputError
from train.paths import writable_file, writable_folder


@pytest.mark.parametrize("check", [writable_file, writable_folder])
@pytest.mark.parametrize("url", ["udp://127.0.0.1:5000", "rtsp://server/seg", "s3://bucket/seg.mp4"])
def test_a_url_is_refused_and_makes_no_folder(tmp_path, monkeypatch, check, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match=f"^--out {url} is a URL, and --out names a local file or folder: name a local path"):
        check(url, "--out")
    assert os.listdir(tmp_path) == []


def test_local_paths_with_colons_are_files(tmp_path):
    assert writable_file(tmp_path / "run 12:30.mp4", "--out").name == "run 12:30.mp4"
