"""`bincli upload`: the split, as SageMaker training channels, to S3 (or recorded in place)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load, renamed
from bincli.console import out


def upload(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    s3_uri: Annotated[str | None, typer.Option(
        "--s3-uri", help="Where the channels go: s3://bucket/prefix (default none: local backend, no-op).",
        show_default=False, metavar="URI")] = None,
    layout: Annotated[str | None, typer.Option(
        "--layout", help="manifest (<split>.csv + images/) or folders (<split>/<count>/<id>.jpg) (default "
        "manifest).", show_default=False, metavar="[manifest|folders]")] = None,
    s3_endpoint_url: Annotated[str | None, typer.Option(
        "--s3-endpoint-url", help="S3-compatible server instead of AWS (default boto3's, e.g. AWS_ENDPOINT_URL).",
        show_default=False, metavar="URL")] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", hidden=True,
                                                     help="Old name of --s3-endpoint-url.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Concurrent uploads (default 16).",
                                                show_default=False)] = None,
) -> None:
    """Upload the split to s3://bucket/prefix/{train,valid,test}/ for SageMaker channels.

    Each channel holds its manifest (train/train.csv) and its images (train/images/<id>.jpg),
    or with --layout folders the split's folder layout (train/<count>/<id>.jpg).
    Incremental: objects already there with the same size and checksum are skipped. With the
    local backend and no --s3-uri nothing moves: the local channel folders are recorded.

    Example: bincli upload --s3-uri s3://my-bucket/abid --s3-endpoint-url http://127.0.0.1:5000
    """
    s3_endpoint_url = renamed(s3_endpoint_url, endpoint_url, "--s3-endpoint-url", "--endpoint-url")
    loaded = load(config, workdir, sets, {
        "upload.s3_uri": ("--s3-uri", s3_uri), "upload.endpoint_url": ("--s3-endpoint-url", s3_endpoint_url),
        "upload.layout": ("--layout", layout),
        "upload.workers": ("--workers", workers),
    })
    from bincli.backends import get_backend

    finish(get_backend(loaded.config).upload(), json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from bincli.progress import human_bytes

    if result["backend"] == "local":
        out.print(f"local backend: nothing to upload; channels are the local folder {result['uri']}", markup=False)
        return
    out.print(f"{result['uri']}: uploaded {result['uploaded']} of {result['objects']} object(s) "
              f"({human_bytes(result['bytes'])}), {result['skipped']} already there, in {result['seconds']:.1f} s",
              markup=False)
    for name, uri in result["channels"].items():
        out.print(f"  {name:<5} {uri}", markup=False)
    if result["extra"]:
        out.print(f"  ({result['extra']} other object(s) under the prefix were left alone)", markup=False)
