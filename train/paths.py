"""Files the user names: output paths checked before any work, so a typo or a read-only place is one
line, not a traceback after minutes of work (missing folders are made, like mkdir -p); YAML configs
read with errors that say where; reports written as JSON."""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import yaml

from train.errors import InvalidInputError

URL_SCHEME = r"[A-Za-z][A-Za-z0-9+.-]+:"      # rtsp:, udp:, s3: ... (one letter would be a Windows drive)


def read_yaml(path: Path):
    """The YAML document in ``path`` ({} when empty); a syntax error is one line with its place."""
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInputError(f"config {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}"
                                ) from None


def writable_file(path: str | Path, flag: str, example: str = "out.json") -> Path:
    """``path`` as a file that can be written: not a folder, in a folder that exists or can be made."""
    local_only(path, flag)
    if str(path).endswith(("/", os.sep)) and not Path(path).is_dir():     # Path() would drop the slash
        raise InvalidInputError(f"{flag} {path} ends with a slash but is not a folder: name a file, e.g. "
                                f"{flag} {Path(path) / example}")
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{flag} {path} is a folder: name a file in it, e.g. {flag} {path / example}")
    writable_folder(path.parent, flag, path)
    return path


def writable_folder(folder: str | Path, flag: str, target=None) -> Path:
    """``folder`` made if missing, and a file can be created in it."""
    local_only(folder, flag)
    folder, target = Path(folder), folder if target is None else target
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{flag} {target}: {existing} is a file, not a folder: choose another place")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"{flag} {target}: cannot create the folder {folder} ({e.strerror}): "
                                f"choose another place") from None
    try:
        write_test(folder)
    except OSError as e:
        raise InvalidInputError(f"{flag} {target}: cannot write in {folder} ({e.strerror}): choose a folder "
                                f"you can write to") from None
    return folder


def write_test(folder: Path) -> None:
    """Make and remove a file in ``folder``; OSError if it cannot be done."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".segpipe-write-test-")
    os.close(fd)
    os.unlink(probe)


def missing_folders(*paths) -> list[Path]:
    """The folders (and files) of ``paths`` (None skipped) that do not exist yet, deepest first: what the
    output checks may make, for ``remove_empty`` to take back when the start fails."""
    made = []
    for path in filter(None, paths):
        path = Path(os.path.abspath(path))       # a/../b is b: never a/.. (b may be the user's)
        while not path.exists() and path != path.parent:
            made.append(path)
            path = path.parent
    return sorted(set(made), key=lambda f: len(f.parts), reverse=True)


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` that are empty folders (a run that wrote nothing leaves nothing)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:              # a file, a folder with something in it, or gone
            pass


def local_only(path: str | Path, flag: str) -> None:
    """Outputs are local files: a URL (which Path would turn into folders named like ``udp:``) is refused."""
    if re.match(URL_SCHEME + "/", str(path)):      # Path("udp://h:1") reads udp:/h:1
        raise InvalidInputError(f"{flag} {path} is a URL, and {flag} names a local file or folder: name a local "
                                f"path (segpipe run --out streams video to rtsp://, udp:// ... URLs)")


def write_json(path: str | Path, data, what: str, log: logging.Logger) -> None:
    """``data`` as JSON in ``path``; a failed write is only a warning on ``log``: the work it reports is done."""
    try:
        Path(path).write_text(json.dumps(data, indent=2, default=str))
    except OSError as e:
        log.warning("could not write %s to %s: %s", what, path, e.strerror or e)
