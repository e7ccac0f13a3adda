"""The `upload` step: the split, laid out as SageMaker training channels, to S3 (or nowhere).

Layout under `upload.s3_uri` (the data contract; a channel folder holds its manifest and images,
and the manifest's relative paths resolve against it):

    s3://bucket/prefix/train/train.csv            s3://bucket/prefix/train/images/<id>.jpg
    s3://bucket/prefix/valid/valid.csv            s3://bucket/prefix/valid/images/<id>.jpg
    s3://bucket/prefix/test/test.csv              s3://bucket/prefix/test/images/<id>.jpg

or, with `upload.layout: folders` (from `bincli split --layout folders`), the ImageFolder layout
with no manifest, which the core reads by folder name:

    s3://bucket/prefix/train/<count>/<id>.jpg     (and valid/, test/)

Backend local with no s3_uri: nothing moves; the local channel folders are recorded instead.

Incremental: one listing of the prefix gives each object's size and ETag; a file whose size and
MD5 match (the ETag of a single-part upload, or the multipart ETag for the same part size) is
skipped. Where the ETag is not an MD5 (SSE-KMS, another tool's part size), a HEAD compares the
sha256 bincli stores in the object's metadata. A rerun after a failure sends only what is missing.
Uploads go through boto3's transfer manager (threads, multipart for large files).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import mimetypes
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from bincli.config import UploadConfig
from bincli.core.contract import SPLITS
from bincli.data.s3 import explain, join_key, list_objects, make_client, parse_s3_uri
from bincli.errors import BincliError, ConfigError, DataError
from bincli.progress import Progress
from bincli.state import State

log = logging.getLogger("bincli.upload")

PART_SIZE = 8 * 1024 * 1024  # multipart threshold and part size (boto3's default)
SHA256_META = "sha256"  # x-amz-meta-sha256
WINDOW = 256  # uploads submitted ahead of the oldest unfinished one (at least 8 x workers)


@dataclass
class Item:
    path: Path
    key: str
    size: int
    md5: str = ""
    etag: str = ""  # the ETag S3 will give it
    sha256: str = ""


def plan(split: dict[str, Any], prefix: str, layout: str = "manifest") -> list[Item]:
    """Every file to upload, from the split's manifests. Checks each file exists locally."""
    if layout == "folders":
        return plan_folders(split, prefix)
    data_root = Path(split["data_root"])
    items: list[Item] = []
    missing: list[str] = []
    for name in SPLITS:
        manifest = Path(split["manifests"][name])
        if not manifest.is_file():
            raise DataError(f"{manifest}: the {name} manifest is missing", hint="run 'bincli split' again")
        items.append(Item(manifest, join_key(prefix, name, f"{name}.csv"), manifest.stat().st_size))
        with open(manifest, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                rel = PurePosixPath(row.get("path") or "")
                if not rel.parts or rel.is_absolute() or ".." in rel.parts:
                    raise DataError(f"{manifest}: path {str(rel)!r} of id {row.get('id')!r} must be relative, "
                                    "inside the data root (e.g. images/00002.jpg)")
                local = data_root / rel
                try:
                    size = local.stat().st_size
                except FileNotFoundError:
                    missing.append(str(local))
                    continue
                items.append(Item(local, join_key(prefix, name, str(rel)), size))
    if missing:
        raise DataError(f"{len(missing)} image(s) in the manifests are not on disk, e.g. {missing[0]}",
                        hint="run 'bincli download' (it resumes) or 'bincli split' again")
    return items


def folders_root(split: dict[str, Any]) -> Path:
    """The root of the split's folder layout, checked to hold a folder per split."""
    if not split.get("folders"):
        raise ConfigError("upload.layout: folders needs the split's folder layout, and the last split wrote "
                          "manifests only", hint="run 'bincli split --layout folders' first")
    root = Path(split["folders"])
    for name in SPLITS:
        if not (root / name).is_dir():
            raise DataError(f"{root / name}: the {name} folder of the split is missing",
                            hint="run 'bincli split' again")
    return root


def plan_folders(split: dict[str, Any], prefix: str) -> list[Item]:
    """Every file of the split's folder layout `<split>/<count>/<id>.jpg`, keys mirroring it."""
    root = folders_root(split)
    items: list[Item] = []
    for name in SPLITS:
        for path in sorted(p for p in (root / name).glob("*/*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            items.append(Item(path, join_key(prefix, rel), path.stat().st_size))
    return items


def digest(item: Item) -> None:
    """MD5, sha256 and the ETag S3 will compute for the file (multipart above PART_SIZE)."""
    md5, sha, parts = hashlib.md5(), hashlib.sha256(), []
    with open(item.path, "rb") as f:
        while chunk := f.read(PART_SIZE):
            md5.update(chunk)
            sha.update(chunk)
            parts.append(hashlib.md5(chunk).digest())
    item.md5, item.sha256 = md5.hexdigest(), sha.hexdigest()
    if item.size >= PART_SIZE and len(parts) > 1:
        item.etag = f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"
    else:
        item.etag = item.md5


def run_upload(cfg: UploadConfig, workdir: Path, require_s3: bool = False, region: str | None = None,
               progress: bool | None = None) -> dict[str, Any]:
    """The whole step. Returns the result (also recorded in state as 'upload'). Without an
    s3_uri the local folders are recorded as the channels, unless `require_s3` (SageMaker)."""
    started = time.monotonic()
    state = State(workdir)
    split = state.require("split", needed_by="upload")
    if cfg.s3_uri is None:
        if require_s3:
            raise ConfigError("upload.s3_uri: required with backend sagemaker",
                              hint="pass --s3-uri s3://bucket/prefix or set upload.s3_uri")
        return _record_local(state, split, cfg)

    bucket, prefix = parse_s3_uri(cfg.s3_uri)
    items = plan(split, prefix, cfg.layout)
    client = make_client(endpoint_url=cfg.endpoint_url, region=region, pool_size=cfg.workers + 4, lean=True)
    where = f"s3://{bucket}/{prefix}".rstrip("/")
    try:
        # Only what _same compares: a listed dict with its datetime is ~1.5 KB (45 MB for 30,000).
        remote = {key: obj for key, obj in list_objects(client, bucket, f"{prefix}/" if prefix else "",
                                                        project=lambda o: (o["Key"], {"Size": o.get("Size"),
                                                                                      "ETag": o.get("ETag")}))}
    except Exception as exc:
        raise _explained(exc, f"listing {where}") from None

    todo: list[Item] = []
    for item in items:
        digest(item)
        if not _same(client, bucket, item, remote.get(item.key)):
            todo.append(item)
    wanted = {item.key for item in items}
    extra = sum(1 for key in remote if key not in wanted)

    failures = _transfer(client, bucket, todo, cfg.workers, progress)
    if failures:
        first_key, first_reason = next(iter(failures.items()))
        raise BincliError(f"{len(failures)} of {len(todo)} upload(s) to {where} failed, e.g. {first_key}: "
                          f"{first_reason}", hint="run 'bincli upload' again: it sends only what is missing")
    outputs = {
        "backend": "s3",
        "uri": f"s3://{bucket}/{prefix}".rstrip("/"),
        "channels": {name: f"s3://{join_key(bucket, prefix, name)}" for name in SPLITS},
        "layout": cfg.layout,
        "manifests": ({name: f"s3://{join_key(bucket, prefix, name, f'{name}.csv')}" for name in SPLITS}
                      if cfg.layout == "manifest" else None),
        "endpoint_url": cfg.endpoint_url,
        "objects": len(items),
        "uploaded": len(todo),
        "skipped": len(items) - len(todo),
        "bytes": sum(item.size for item in todo),
        "extra": extra,
        "seconds": round(time.monotonic() - started, 3),
    }
    state.record("upload", outputs, cfg.model_dump(mode="json"))
    return outputs


def _record_local(state: State, split: dict[str, Any], cfg: UploadConfig) -> dict[str, Any]:
    """Backend local: the manifests folder IS the channel folder of each split (it holds
    train.csv, valid.csv, test.csv), and image paths resolve against the data root; with the
    folders layout each split's folder is its channel."""
    if cfg.layout == "folders":
        root = folders_root(split).resolve()
        uri, channels, manifests = str(root), {name: str(root / name) for name in SPLITS}, None
    else:
        manifests = {name: str(Path(split["manifests"][name]).resolve()) for name in SPLITS}
        uri, channels = str(Path(split["manifests_dir"]).resolve()), {
            name: str(Path(manifests[name]).parent) for name in SPLITS}
    outputs = {
        "backend": "local",
        "uri": uri,
        "channels": channels,
        "layout": cfg.layout,
        "manifests": manifests,
        "data_root": str(Path(split["data_root"]).resolve()),
        "objects": 0,
        "uploaded": 0,
        "skipped": 0,
        "bytes": 0,
        "extra": 0,
        "seconds": 0.0,
    }
    state.record("upload", outputs, cfg.model_dump(mode="json"))
    return outputs


def _same(client: Any, bucket: str, item: Item, obj: dict[str, Any] | None) -> bool:
    """Is the object already there with the same bytes? Listing first; a HEAD only if the ETag
    is not an MD5 of ours (encrypted bucket, other part size) but the size matches."""
    if obj is None or int(obj.get("Size", -1)) != item.size:
        return False
    if str(obj.get("ETag", "")).strip('"') == item.etag:
        return True
    try:
        head = client.head_object(Bucket=bucket, Key=item.key)
    except Exception:
        return False
    return head.get("Metadata", {}).get(SHA256_META) == item.sha256


def _transfer(client: Any, bucket: str, items: list[Item], workers: int, progress: bool | None) -> dict[str, str]:
    """Upload through boto3's transfer manager; returns {key: reason} of the failures."""
    if not items:
        return {}
    from boto3.s3.transfer import TransferConfig, create_transfer_manager
    from s3transfer.subscribers import BaseSubscriber

    bar = Progress("upload", total=len(items), unit="files", enabled=progress)

    class Report(BaseSubscriber):
        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            bar.add_bytes(bytes_transferred)

        def on_done(self, future: Any, **kwargs: Any) -> None:
            try:
                future.result()
                bar.advance(1)
            except Exception:
                bar.advance(1, failed=1)

    config = TransferConfig(max_concurrency=workers, multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                            use_threads=True)
    failures: dict[str, str] = {}

    def collect(item: Item, future: Any) -> None:
        try:
            future.result()
        except Exception as exc:
            failures[item.key] = str(_explained(exc, "upload"))

    # A window of futures, not one per file at once: each holds ~7 KB (200 MB for 30,000 files).
    window = max(WINDOW, 8 * workers)
    with bar, create_transfer_manager(client, config) as manager:
        pending: deque[tuple[Item, Any]] = deque()
        for item in items:
            content_type = mimetypes.guess_type(item.path.name)[0] or "application/octet-stream"
            extra = {"ContentType": content_type, "Metadata": {SHA256_META: item.sha256}}
            pending.append((item, manager.upload(str(item.path), bucket, item.key, extra_args=extra,
                                                 subscribers=[Report()])))
            if len(pending) >= window:
                collect(*pending.popleft())
        while pending:
            collect(*pending.popleft())
    return failures


def _explained(exc: Exception, what: str) -> Exception:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, BotoCoreError | ClientError):
        return explain(exc, what)
    return exc
