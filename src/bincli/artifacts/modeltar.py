"""Open a model.tar.gz safely: check every member before anything is written.

An archive is refused (DataError naming the member) when a member has an absolute path, a `..`
component, is a device/fifo, or is a link that points outside the extraction folder; when it
unpacks to more than MAX_UNPACKED_BYTES; or when model.pth / model_info.json are missing.
Extraction then runs with tarfile's "data" filter as a second guard. No torch here: deploy
checks an archive before it starts a server.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from bincli.core.contract import MODEL_INFO_FILE, WEIGHTS_FILE
from bincli.errors import DataError

MAX_UNPACKED_BYTES = 4 * 1024**3  # a resnet50 archive unpacks to ~100 MB


def _open(tar_path: Path) -> tarfile.TarFile:
    if not tar_path.is_file():
        raise DataError(f"{tar_path}: model archive not found",
                        hint="run 'bincli train' first, or pass --model path/to/model.tar.gz")
    try:
        return tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{tar_path}: not a readable tar archive ({exc}); expected a model.tar.gz") from None


def _normal(name: str) -> str:
    return str(PurePosixPath(name)).removeprefix("./")


def check_members(tar: tarfile.TarFile, tar_path: Path,
                  required: tuple[str, ...] = (WEIGHTS_FILE, MODEL_INFO_FILE)) -> list[tarfile.TarInfo]:
    """Every member, once each is known to be safe to extract and the `required` files are there."""
    members = tar.getmembers()
    total = 0
    for m in members:
        path = PurePosixPath(m.name)
        where = f"{tar_path}: member {m.name!r}"
        if m.name.startswith(("/", "\\")) or path.is_absolute() or (len(m.name) > 1 and m.name[1] == ":"):
            raise DataError(f"{where} has an absolute path; refusing to extract this archive")
        if ".." in path.parts or ".." in PurePosixPath(m.name.replace("\\", "/")).parts:
            raise DataError(f"{where} climbs out of the archive ('..'); refusing to extract this archive")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            resolved = (path.parent / target) if m.issym() else target
            if target.is_absolute() or _escapes(resolved):
                raise DataError(f"{where} links outside the archive ({m.linkname!r}); refusing to extract")
        elif not (m.isfile() or m.isdir()):
            raise DataError(f"{where} is not a regular file or folder; refusing to extract")
        total += max(m.size, 0)
        if total > MAX_UNPACKED_BYTES:
            raise DataError(f"{tar_path}: unpacks to more than {MAX_UNPACKED_BYTES} bytes; refusing to extract")
    names = {_normal(m.name) for m in members if m.isfile()}
    missing = [f for f in required if f not in names]
    if missing:
        hint = ("a model.tar.gz holds model.pth, model_info.json and code/ (bincli train writes it)"
                if WEIGHTS_FILE in required else None)
        raise DataError(f"{tar_path}: {' and '.join(missing)} missing at the top of the archive", hint=hint)
    return members


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (".", ""):
            depth += 1
    return False


def read_model_info(tar_path: Path) -> dict[str, Any]:
    """model_info.json from the archive, after checking every member (nothing is extracted)."""
    tar_path = Path(tar_path)
    with _open(tar_path) as tar:
        members = check_members(tar, tar_path)
        member = next(m for m in members if m.isfile() and _normal(m.name) == MODEL_INFO_FILE)
        f = tar.extractfile(member)
        try:
            info = json.loads(f.read().decode("utf-8")) if f else None
        except (ValueError, UnicodeDecodeError):
            info = None
    if not isinstance(info, dict) or not all(k in info for k in ("arch", "classes", "image_size")):
        raise DataError(f"{tar_path}: {MODEL_INFO_FILE} is not a JSON object with arch, classes and image_size")
    return info


def extract_model(tar_path: Path, dest: Path,
                  required: tuple[str, ...] = (WEIGHTS_FILE, MODEL_INFO_FILE)) -> Path:
    """Check, then extract into `dest` (created); returns dest. Also for a training job's
    output.tar.gz, with `required` naming what it must hold."""
    tar_path = Path(tar_path)
    dest = Path(dest)
    with _open(tar_path) as tar:
        members = check_members(tar, tar_path, required)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            # The "data" filter (Python >= 3.11.4) re-checks paths and links and drops odd permissions.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **extra)
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{tar_path}: cannot extract: {exc}") from None
    return dest
