"""Open a model.tar.gz safely: check every member, then write each file ourselves (no extractall).

bincli's archives (artifacts.bundle.package_model) and SageMaker's hold only regular files and
folders, so every other member is refused: symlinks and hardlinks (not "checked": a chain of links
made by earlier members defeats one-member-at-a-time checks and, through a path longer than
PATH_MAX, tarfile's "data" filter before Python 3.11.13, CVE-2025-4517), devices, fifos, sparse
files. Also refused: absolute paths, '..', backslashes, control characters, over-long or too deep
names, duplicates, more than MAX_MEMBERS members, a file over MAX_MEMBER_BYTES, more than
MAX_UNPACKED_BYTES in all. Each refusal is one DataError line naming the archive and the member.

extract_model() is the one function that writes an archive to disk. No torch here: deploy checks
an archive before it starts a server. POSIX only (dir_fd, O_NOFOLLOW), like the rest of bincli.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bincli.core.classes import ClassSpec
from bincli.core.contract import GRAPH_FORMATS, GRAPH_KEY, MODEL_INFO_FILE, MODEL_INFO_KEYS, WEIGHTS_FILE
from bincli.core.hyperparams import MODEL_CHOICES, PARAMS_BY_NAME
from bincli.errors import DataError

MAX_MEMBERS = 1000                 # a model archive holds ~20 (weights, info, code/ bundle)
MAX_MEMBER_BYTES = 1 * 1024**3     # resnet50's model.pth is ~95 MB
MAX_UNPACKED_BYTES = 2 * 1024**3
MAX_INFO_BYTES = 16 * 1024**2      # model_info.json; train_ids makes it ~100 KB
MAX_PATH_BYTES = 1024
MAX_PART_BYTES = 255               # NAME_MAX
MAX_DEPTH = 16
# Headers (512 B each, pax records) on top of the file data: caps the decompressed stream.
_MAX_STREAM_BYTES = MAX_UNPACKED_BYTES + 64 * 1024**2

# The model_info.json contract. Also read by core/inference.py (which cannot import artifacts).
# What training accepts, from the stdlib-only declaration (core/model.py imports torchvision).
ARCHITECTURES = MODEL_CHOICES
IMAGE_SIZE_RANGE = (int(PARAMS_BY_NAME["image_size"].ge), int(PARAMS_BY_NAME["image_size"].le))

_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_KIND = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "character device",
         tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "contiguous file",
         tarfile.GNUTYPE_SPARSE: "sparse file"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class _Entry:
    member: tarfile.TarInfo
    parts: tuple[str, ...]  # the checked relative path; () is the archive's own "./"
    is_dir: bool


class _TooBig(Exception):
    pass


class _Capped:
    """A read-only stream that refuses to go past `cap` decompressed bytes, whatever tarfile asks
    (a pax header or a lying size could otherwise make it read a decompression bomb into memory)."""

    def __init__(self, raw: Any, cap: int, name: str):
        self.raw, self.cap, self.name, self.mode = raw, cap, name, "rb"

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or self.raw.tell() + n > self.cap:
            raise _TooBig  # refused before reading: no allocation of a declared size
        return self.raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.raw.tell() + offset if whence == 1 else None
        if target is None or target > self.cap:
            raise _TooBig  # tarfile only seeks from the start or forward within a member
        return self.raw.seek(target)

    def tell(self) -> int:
        return self.raw.tell()


_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


@contextmanager
def _open(tar_path: Path) -> Iterator[tarfile.TarFile]:
    """The archive as a TarFile reading through _Capped (gzip, bzip2, xz or plain)."""
    if not tar_path.is_file():
        raise DataError(f"{tar_path}: model archive not found",
                        hint="run 'bincli train' first, or pass --model path/to/model.tar.gz")
    with ExitStack() as stack:  # tarfile/gzip given a file object do not close it themselves
        try:
            raw: Any = stack.enter_context(open(tar_path, "rb"))
            magic = raw.read(6)
            raw.seek(0)
            if magic[:2] == b"\x1f\x8b":
                raw = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            elif magic[:3] == b"BZh":
                raw = stack.enter_context(bz2.BZ2File(raw))
            elif magic == b"\xfd7zXZ\x00":
                raw = stack.enter_context(lzma.LZMAFile(raw))
            tar = stack.enter_context(tarfile.open(fileobj=_Capped(raw, _MAX_STREAM_BYTES, str(tar_path)), mode="r:"))
        except _TooBig:
            raise DataError(f"{tar_path}: its first header declares more than {_size(MAX_UNPACKED_BYTES)}; "
                            "refusing to extract") from None
        except _READ_ERRORS as exc:
            raise DataError(f"{tar_path}: not a readable tar archive ({_one_line(exc)}); "
                            "expected a model.tar.gz") from None
        yield tar


def _show(name: str) -> str:
    return repr(name if len(name) <= 120 else name[:120] + "...")


def _json(value: Any) -> str:
    """A model_info value as written in the file (so 64 and "64" differ), cut short."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _parts(name: str, where: str) -> tuple[str, ...]:
    """The member's path as checked components, or a DataError."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DataError(f"{where} has a control character in its name; refusing to extract this archive")
    if "\\" in name:
        raise DataError(f"{where} has a backslash in its name; refusing to extract this archive")
    if name.startswith("/") or _DRIVE.match(name):
        raise DataError(f"{where} has an absolute path; refusing to extract this archive")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise DataError(f"{where} has a name over {MAX_PATH_BYTES} bytes; refusing to extract this archive")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise DataError(f"{where} climbs out of the archive ('..'); refusing to extract this archive")
    if len(parts) > MAX_DEPTH:
        raise DataError(f"{where} is nested deeper than {MAX_DEPTH} folders; refusing to extract this archive")
    if any(len(p.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES for p in parts):
        raise DataError(f"{where} has a name part over {MAX_PART_BYTES} bytes; refusing to extract this archive")
    return parts


def _scan(tar: tarfile.TarFile, tar_path: Path, required: tuple[str, ...]) -> list[_Entry]:
    """Every member, checked, before anything is written; stops at the first refusal, so a huge
    or endless archive is not read further than needed."""
    entries: list[_Entry] = []
    kinds: dict[tuple[str, ...], bool] = {}  # path -> is a folder
    total = 0
    try:
        for count, m in enumerate(iter(tar.next, None), 1):
            if count > MAX_MEMBERS:
                raise DataError(f"{tar_path}: more than {MAX_MEMBERS} members; refusing to extract this archive")
            where = f"{tar_path}: member {_show(m.name)}"
            parts = _parts(m.name, where)
            if m.issym() or m.islnk():
                raise DataError(f"{where} is a {_KIND[m.type]} (to {_show(m.linkname)}); model archives hold "
                                "no links, refusing to extract this archive")
            is_dir = m.type == tarfile.DIRTYPE
            if not is_dir and m.type not in _FILE_TYPES:
                kind = _KIND.get(m.type, f"member of type {m.type!r}")
                raise DataError(f"{where} is a {kind}, not a regular file or folder; refusing to extract this archive")
            if not is_dir:
                if not parts:
                    raise DataError(f"{where} is a file without a name; refusing to extract this archive")
                if m.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{where} is over {_size(MAX_MEMBER_BYTES)}; refusing to extract this archive")
                total += m.size
                if total > MAX_UNPACKED_BYTES:
                    raise DataError(f"{tar_path}: unpacks to more than {_size(MAX_UNPACKED_BYTES)} "
                                    f"(at member {_show(m.name)}); refusing to extract this archive")
            for i in range(1, len(parts)):
                if kinds.setdefault(parts[:i], True) is False:
                    raise DataError(f"{where} sits under a file of the same archive; refusing to extract this archive")
            if parts in kinds and not (is_dir and kinds[parts]):
                raise DataError(f"{where} appears twice; refusing to extract this archive")
            kinds[parts] = is_dir
            entries.append(_Entry(m, parts, is_dir))
    except _TooBig:
        raise DataError(f"{tar_path}: unpacks to more than {_size(MAX_UNPACKED_BYTES)}; refusing to extract") from None
    except _READ_ERRORS as exc:
        raise DataError(f"{tar_path}: damaged archive ({_one_line(exc)}); expected a model.tar.gz") from None
    names = {"/".join(e.parts) for e in entries if not e.is_dir}
    missing = [f for f in required if f not in names]
    if missing:
        hint = ("a model.tar.gz holds model.pth, model_info.json and code/ (bincli train writes it)"
                if WEIGHTS_FILE in required else None)
        raise DataError(f"{tar_path}: {' and '.join(missing)} missing at the top of the archive", hint=hint)
    return entries


# ---------------------------------------------------------------- writing
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1024 * 1024


def extract_model(tar_path: Path, dest: Path,
                  required: tuple[str, ...] = (WEIGHTS_FILE, MODEL_INFO_FILE)) -> Path:
    """Check every member, then write them into `dest`; returns dest.

    `dest` must not exist (it is created) or be an empty folder the caller just made (a mkdtemp).
    On any refusal nothing stays behind in it. Also for a training job's output.tar.gz, with
    `required` naming the files it must hold.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    with _open(tar_path) as tar:
        entries = _scan(tar, tar_path, required)
        created = _fresh_dir(dest, tar_path)
        try:
            _write(tar, entries, dest, tar_path)
        except BaseException:
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            else:
                for child in dest.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            raise
    return dest


def _fresh_dir(dest: Path, tar_path: Path) -> bool:
    """Create dest (True), or accept an existing empty real folder (False)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.mkdir(mode=0o755)
        return True
    except FileExistsError:
        if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
            raise DataError(f"{dest}: already exists and is not an empty folder; "
                            f"refusing to extract {tar_path} into it") from None
        return False


def _write(tar: tarfile.TarFile, entries: list[_Entry], dest: Path, tar_path: Path) -> None:
    root = os.open(dest, _DIR_FLAGS)
    budget = MAX_UNPACKED_BYTES
    try:
        for e in entries:
            if not e.parts:
                continue
            where = f"{tar_path}: member {_show(e.member.name)}"
            try:
                folder = _open_dirs(root, e.parts if e.is_dir else e.parts[:-1])
                try:
                    if not e.is_dir:
                        budget -= _write_file(tar, e, folder, budget, where)
                finally:
                    if folder != root:
                        os.close(folder)
            except _TooBig:
                raise DataError(f"{where}: the archive unpacks to more than {_size(MAX_UNPACKED_BYTES)}; "
                                "refusing to extract") from None
            except DataError:
                raise
            except _READ_ERRORS as exc:
                raise DataError(f"{where}: cannot extract ({_one_line(exc)})") from None
    finally:
        os.close(root)


def _open_dirs(root: int, parts: tuple[str, ...]) -> int:
    """An fd for root/parts, made with mkdir where missing; never follows a symlink."""
    fd = root
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != root:
                os.close(fd)
            fd = child
            if made:
                os.fchmod(fd, 0o755)  # mkdir's mode goes through the umask
    except BaseException:
        if fd != root:
            os.close(fd)
        raise
    return fd


def _write_file(tar: tarfile.TarFile, e: _Entry, folder: int, budget: int, where: str) -> int:
    """Copy one member's bytes, counting what is written (not what the header says); returns the count."""
    src = tar.extractfile(e.member)
    if src is None:
        raise DataError(f"{where} has no data; refusing to extract this archive")
    fd = os.open(e.parts[-1], _FILE_FLAGS, 0o644, dir_fd=folder)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(fd, 0o644)
        written = 0
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > e.member.size or written > budget:
                raise DataError(f"{where} holds more bytes than allowed; refusing to extract this archive")
            out.write(chunk)
    if written != e.member.size:
        raise DataError(f"{where} is shorter than its header says; the archive is damaged")
    return written


# ---------------------------------------------------------------- model_info.json
def read_model_info(tar_path: Path) -> dict[str, Any]:
    """model_info.json from the archive, checked, after checking every member (nothing is extracted)."""
    tar_path = Path(tar_path)
    with _open(tar_path) as tar:
        entries = _scan(tar, tar_path, (WEIGHTS_FILE, MODEL_INFO_FILE))
        member = next(e.member for e in entries if not e.is_dir and e.parts == (MODEL_INFO_FILE,))
        if member.size > MAX_INFO_BYTES:
            raise DataError(f"{tar_path}: {MODEL_INFO_FILE} is over {_size(MAX_INFO_BYTES)}; not a model_info file")
        try:
            f = tar.extractfile(member)
            data = f.read(MAX_INFO_BYTES + 1) if f else b""
        except (_TooBig, *_READ_ERRORS) as exc:
            raise DataError(f"{tar_path}: cannot read {MODEL_INFO_FILE} ({_one_line(exc)})") from None
    return parse_model_info(data, tar_path)


def read_model_info_file(path: Path, archive: Path) -> dict[str, Any]:
    """model_info.json from an extracted archive, checked; errors name the archive."""
    with open(path, "rb") as f:
        data = f.read(MAX_INFO_BYTES + 1)
    return parse_model_info(data, archive)


def parse_model_info(data: bytes, where: Path | str) -> dict[str, Any]:
    """The model_info.json contract: arch, classes, image_size (+ optional labels, mean, std, graph)."""
    what = f"{where}: {MODEL_INFO_FILE}"
    if len(data) > MAX_INFO_BYTES:
        raise DataError(f"{what} is over {_size(MAX_INFO_BYTES)}")
    try:
        info = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict):
        raise DataError(f"{what} is not a JSON object with {', '.join(MODEL_INFO_KEYS)}")
    missing = [k for k in MODEL_INFO_KEYS if k not in info]
    if missing:
        raise DataError(f"{what} lacks {', '.join(missing)} (it needs {', '.join(MODEL_INFO_KEYS)})")
    arch = info["arch"]
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise DataError(f"{what}: arch {_json(arch)} is not one of {', '.join(ARCHITECTURES)}")
    size = info["image_size"]
    low, high = IMAGE_SIZE_RANGE
    if type(size) is not int or not low <= size <= high:
        raise DataError(f"{what}: image_size {_json(size)} is not a whole number from {low} to {high}")
    if not isinstance(info["classes"], str):
        raise DataError(f"{what}: classes {_json(info['classes'])} is not a string like '1-5' or '0-5+'")
    try:
        spec = ClassSpec.parse(info["classes"])
    except ValueError as exc:
        raise DataError(f"{what}: {exc}") from None
    labels = info.get("labels")
    if labels is not None and labels != spec.labels:
        raise DataError(f"{what}: labels {_json(labels)} do not match classes {spec} ({spec.labels})")
    for key in ("mean", "std"):
        value = info.get(key)
        if value is None:
            continue
        if (not isinstance(value, list) or len(value) != 3
                or not all(type(v) in (int, float) and math.isfinite(v) for v in value)
                or (key == "std" and not all(v > 0 for v in value))):
            raise DataError(f"{what}: {key} {_json(value)} is not 3 finite numbers"
                            + (" above 0" if key == "std" else ""))
    _check_graph(info.get(GRAPH_KEY), what)
    return info


def _check_graph(graph: Any, what: str) -> None:
    """The optional "graph" record (artifacts/export.py): absent in archives packaged before graphs."""
    if graph is None:
        return
    expected = '{"format": "onnx", "file": "model.onnx", ...}'
    if not isinstance(graph, dict) or graph.get("format") not in GRAPH_FORMATS:
        raise DataError(f"{what}: {GRAPH_KEY} {_json(graph)} is not an inference graph record like {expected}")
    name = graph.get("file")
    if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", name)
            or name in (WEIGHTS_FILE, MODEL_INFO_FILE)):
        raise DataError(f"{what}: {GRAPH_KEY}.file {_json(name)} is not a file name at the top of the archive "
                        "(like \"model.onnx\")")
    opset = graph.get("opset")
    if opset is not None and (type(opset) is not int or not 1 <= opset <= 1000):
        raise DataError(f"{what}: {GRAPH_KEY}.opset {_json(opset)} is not a whole number from 1 to 1000")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _one_line(exc: BaseException) -> str:
    text = " ".join(_ANSI.sub("", str(exc)).split())
    return (text if len(text) <= 200 else text[:200] + "...") or type(exc).__name__
