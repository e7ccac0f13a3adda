"""The Amazon Bin Image Dataset: bucket layout, ids, metadata, the photo rules and the Udacity subset list.

One place for the facts in shared/ABID.md that code relies on:
  - bucket `aft-vbi-pds`, keys `bin-images/<id>.jpg` and `metadata/<id>.json`;
  - ids are STRINGS ("00002", "100313", and a few unpadded ones like "1000"): never int() them;
  - the label is the metadata's `EXPECTED_QUANTITY`;
  - photos are JPEGs well under 1 MP, metadata a few kB: anything far bigger is refused unread.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from bincli.errors import DataError

BUCKET = "aft-vbi-pds"
REGION = "us-east-1"
IMAGE_PREFIX = "bin-images/"
METADATA_PREFIX = "metadata/"
IMAGE_SUFFIX = ".jpg"
METADATA_SUFFIX = ".json"
LABEL_KEY = "EXPECTED_QUANTITY"

# Local layout of downloaded data (the data contract other steps read).
IMAGES_DIR = "images"
METADATA_DIR = "metadata"

# Caps far above real ABID files (photos < 1 MP and < 1 MB, metadata ~8 kB at most in the sample)
# and far below what would exhaust memory: a decompression bomb or a junk file is one bad id.
MAX_IMAGE_PIXELS = 25_000_000
MAX_METADATA_BYTES = 1 << 20

_ID = re.compile(r"^[0-9]{1,9}\Z")  # \Z: "$" would let "123\n" through


def normalize_id(raw: str) -> str:
    """An ABID id from what people and lists write: "00002", " 00002\\n", "00002.jpg",
    "data/metadata/00002.json", "bin-images/100313.jpg". Digits are kept exactly as written
    (zero padding is part of the key); raises ValueError for anything else."""
    if not isinstance(raw, str):
        raise ValueError(f"ABID ids are strings (zero padding matters), got {type(raw).__name__} {raw!r}; "
                         "quote it, e.g. '00002'")
    text = raw.strip().replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (IMAGE_SUFFIX, METADATA_SUFFIX):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
    if not _ID.match(text):
        raise ValueError(f"not an ABID id: {raw!r} (expected digits such as '00002' or '100313')")
    return text


def image_key(id_: str) -> str:
    return f"{IMAGE_PREFIX}{id_}{IMAGE_SUFFIX}"


def metadata_key(id_: str) -> str:
    return f"{METADATA_PREFIX}{id_}{METADATA_SUFFIX}"


def image_rel(id_: str) -> str:
    """The image's path relative to a local data root: `images/<id>.jpg` (as manifests hold it)."""
    return f"{IMAGES_DIR}/{id_}{IMAGE_SUFFIX}"


def metadata_rel(id_: str) -> str:
    return f"{METADATA_DIR}/{id_}{METADATA_SUFFIX}"


def local_ids(root: Path, only: set[str] | None = None) -> tuple[dict[str, Path], dict[str, Path]]:
    """The ids of a local data root: ({id: metadata file}, {id: image file}), of `only` if given."""
    meta, images, _ = local_files(root, only)
    return meta, images


def local_files(root: Path, only: set[str] | None = None
                ) -> tuple[dict[str, Path], dict[str, Path], dict[str, str]]:
    """local_ids, and {file: why it is not read} for the names that are not ABID ids (digits: a
    name such as '=HYPERLINK(..)' never reaches a manifest) and the files that are not regular
    (a FIFO, or a link to /dev/zero, would block or never end; checked without opening them).
    The file is named printably (ascii(): a name that is not UTF-8 cannot be printed or stored)."""
    import stat

    bad: dict[str, str] = {}

    def found(folder: str, suffix: str) -> dict[str, Path]:
        out = {}
        for p in (root / folder).glob(f"*{suffix}"):
            stem = p.name[:-len(suffix)]
            if only is not None and stem not in only:
                continue
            if not _ID.match(stem):
                bad[f"{folder}/{p.name!a}"] = "not an ABID id (expected digits, e.g. 00002)"
                continue
            try:
                mode = p.stat().st_mode  # follows links: where it points is what would be read
            except OSError as exc:
                bad[f"{folder}/{p.name}"] = f"unreadable ({exc.strerror or type(exc).__name__})"
                continue
            if not stat.S_ISREG(mode):
                bad[f"{folder}/{p.name}"] = "not a regular file (a FIFO, device, socket or folder); not read"
                continue
            out[stem] = p
        return out

    return found(METADATA_DIR, METADATA_SUFFIX), found(IMAGES_DIR, IMAGE_SUFFIX), bad


def id_from_key(key: str) -> str | None:
    """The id of a bucket key (`metadata/00002.json` -> "00002"), or None for other keys."""
    for prefix, suffix in ((METADATA_PREFIX, METADATA_SUFFIX), (IMAGE_PREFIX, IMAGE_SUFFIX)):
        if key.startswith(prefix) and key.endswith(suffix):
            stem = key[len(prefix): -len(suffix)]
            return stem if _ID.match(stem) else None
    return None


# ---------------------------------------------------------------- metadata and the label rule
def label_of(metadata: Any) -> int:
    """`EXPECTED_QUANTITY` of a parsed metadata document; ValueError if absent or not a count."""
    count = metadata.get(LABEL_KEY) if isinstance(metadata, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"metadata has no valid {LABEL_KEY} (got {count!r})")
    return count


def parse_metadata(data: bytes | str) -> dict[str, Any]:
    """Parse one metadata document and check it has a label; ValueError saying what is wrong."""
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata too large ({len(data):,} bytes, over {MAX_METADATA_BYTES:,}; "
                         "ABID metadata is a few kB)")
    try:
        doc = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise ValueError(f"metadata is not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    except RecursionError:  # the parser's depth limit: ABID metadata is three levels deep
        raise ValueError("metadata is nested too deeply to be ABID metadata") from None
    label_of(doc)
    return doc


def read_label(source: str | Path | IO[bytes]) -> int:
    """The label of one metadata file (a path or an open binary file), reading no more than the
    cap allows. OSError if it cannot be read; ValueError saying what is wrong with it."""
    if isinstance(source, str | Path):
        with open(source, "rb") as f:
            return read_label(f)
    return label_of(parse_metadata(source.read(MAX_METADATA_BYTES + 1)))


# ---------------------------------------------------------------- photos
class BadImage(ValueError):
    """A photo that breaks the rules. kind: corrupt | too_large."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def check_photo(source: str | Path | IO[bytes], decode: bool = False) -> None:
    """An ABID photo: a JPEG of at most MAX_IMAGE_PIXELS, whose header and markers Pillow accepts
    (`verify`), or with `decode`, that decodes whole (at 1/8 scale: fast, still reads every
    byte). Raises BadImage with the reason."""
    from PIL import Image, UnidentifiedImageError

    too_large = f"over {MAX_IMAGE_PIXELS:,} pixels; ABID photos are under 1 MP"
    try:
        with Image.open(source) as im:
            if im.format != "JPEG":
                raise BadImage("corrupt", f"not a JPEG ({im.format})")
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise BadImage("too_large", f"image too large ({width}x{height} pixels, {too_large})")
            if decode:
                im.draft("RGB", (width // 8 or 1, height // 8 or 1))
                im.load()
            else:
                im.verify()
    except Image.DecompressionBombError:
        raise BadImage("too_large", f"image too large ({too_large})") from None
    except UnidentifiedImageError:
        raise BadImage("corrupt", "not an image") from None
    except BadImage:
        raise
    except OSError as exc:
        if exc.errno is not None:  # the file itself could not be read: not the photo's fault
            raise
        raise BadImage("corrupt", f"corrupt image ({_first_line(exc)})") from None
    except Exception as exc:  # a parser fed hostile bytes may fail any way: the file is bad, not bincli
        raise BadImage("corrupt", f"corrupt image ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:80]


# ---------------------------------------------------------------- id lists
def read_file_list(path: str | Path) -> dict[str, list[str]]:
    """The Udacity subset list `{"1": ["data/metadata/100313.json", ...], ...}` as {class: [ids]}.

    Accepted as it is: keys are the class (item count) as a string, entries any path or name
    whose stem is the id. Order is kept; an id listed twice is kept once (first place)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file list ({exc.strerror})") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise DataError(f'{path}: expected {{"1": ["data/metadata/100313.json", ...], ...}} (class -> list of files)')
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for cls, entries in doc.items():
        if not str(cls).strip().isdigit():
            raise DataError(f"{path}: class key {cls!r} is not a count (expected '1', '2', ...)")
        ids = []
        for entry in entries:
            try:
                id_ = normalize_id(entry)
            except ValueError as exc:
                raise DataError(f"{path}: class {cls}: {exc}") from None
            if id_ not in seen:
                seen.add(id_)
                ids.append(id_)
        out[str(cls).strip()] = ids
    return out


def read_ids_file(path: str | Path) -> list[str]:
    """A text file with one id per line (blank lines and `#` comments ignored), order kept."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the ids file ({exc.strerror})") from None
    ids = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(normalize_id(text))
        except ValueError as exc:
            raise DataError(f"{path}:{n}: {exc}") from None
    return dedupe(ids)


def dedupe(ids: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    return [i for i in ids if not (i in seen or seen.add(i))]
