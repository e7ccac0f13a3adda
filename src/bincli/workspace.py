"""This workspace's id: random, made once, kept in <workdir>/workspace-id.

A path is no identity: CI runners, containers and notebooks share absolute paths, so a tag made
from one would let one workspace's `teardown --all` delete another's endpoints. SageMaker
resources carry this id in their `bincli:workspace` tag, and a SageMaker endpoint's default name
ends with it. Deleting the file makes a new id: what the old one tagged is then no longer found.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from bincli.core.fileio import atomic_write_text
from bincli.errors import StateError

ID_FILE = "workspace-id"
_ID = re.compile(r"[0-9a-f]{12}")


def workspace_id(workdir: str | Path) -> str:
    """The id in <workdir>/workspace-id, made now if there is none (two processes racing get one id)."""
    path = Path(workdir) / ID_FILE
    found = _read(path)
    if found:
        return found
    tmp = path.with_name(f".{ID_FILE}.{secrets.token_hex(4)}.tmp")
    try:
        atomic_write_text(tmp, secrets.token_hex(6) + "\n")
        try:
            os.link(tmp, path)  # unlike a rename, never replaces an id another process wrote first
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system
            if not path.exists():
                os.replace(tmp, path)
    except OSError as exc:
        raise StateError(f"{path}: cannot write this workspace's id ({exc.strerror})",
                         hint="use a workdir you can write to (-w), or set deploy.name") from None
    finally:
        tmp.unlink(missing_ok=True)
    made = _read(path)
    if made is None:  # removed between the write and this read
        raise StateError(f"{path}: vanished as it was made", hint="run the command again")
    return made


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StateError(f"{path}: unreadable workspace id ({exc})",
                         hint="fix its permissions, or restore it from a backup") from None
    if not _ID.fullmatch(text):
        raise StateError(f"{path}: not a workspace id (12 hex digits)",
                         hint="restore it; deleting it makes a new id, and 'teardown --all' no longer finds "
                              "the SageMaker resources the old one tagged")
    return text
