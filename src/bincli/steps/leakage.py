"""Train/test leakage guards: a model remembers which photos it was trained on.

`train` writes the ids of its training split into the model's model_info.json (`train_ids`,
with their fingerprint), so `evaluate` can refuse to score a model on photos it has seen, as
happens after a re-split (the probe found 101 of 125 "test" photos were training photos).
`train` itself refuses a split whose train, valid and test manifests share ids.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bincli.core.contract import MODEL_INFO_FILE, SPLITS
from bincli.core.fileio import atomic_write_json
from bincli.errors import DataError

TRAIN_IDS_KEY = "train_ids"
TRAIN_FINGERPRINT_KEY = "train_split_fingerprint"


def manifest_ids(path: str | Path) -> list[str]:
    """The id column of an id,path,count manifest (ids stay strings: "00002")."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            next(rows, None)  # the header; core.data.read_manifest checks it when training
            return [row[0] for row in rows if row]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc})", hint="run 'bincli split' again") from None


def fingerprint(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def check_split_is_disjoint(split: Mapping[str, Any]) -> None:
    """DataError when a photo is in two of the split's manifests (a hand-edited or mixed split)."""
    seen: dict[str, str] = {}
    manifests = split.get("manifests") or {}
    for name in sorted(manifests, key=lambda n: SPLITS.index(n) if n in SPLITS else len(SPLITS)):
        clash = [i for i in manifest_ids(manifests[name]) if seen.setdefault(i, name) != name]
        if clash:
            raise DataError(f"{len(clash)} photo(s) of the {name} split are also in the {seen[clash[0]]} split "
                            f"(e.g. {clash[0]}): its metrics would count photos the model trained on",
                            hint="run 'bincli split' again")


def record_training_split(model_dir: Path, split: Mapping[str, Any]) -> str:
    """Add the training split's ids and fingerprint to model_dir/model_info.json; returns the fingerprint."""
    ids = manifest_ids(split["manifests"]["train"])
    info_path = Path(model_dir) / MODEL_INFO_FILE
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info[TRAIN_IDS_KEY] = sorted(ids)
    info[TRAIN_FINGERPRINT_KEY] = fingerprint(ids)
    atomic_write_json(info_path, info)
    return info[TRAIN_FINGERPRINT_KEY]


def check_not_trained_on(model_info: Mapping[str, Any], ids: Iterable[str], split_name: str, model: str) -> None:
    """DataError when photos of `split_name` were in the model's training split. Archives made
    before train recorded its split carry no ids: nothing to check."""
    trained = model_info.get(TRAIN_IDS_KEY)
    if split_name == "train" or not isinstance(trained, list):
        return
    ids = list(ids)
    seen = set(trained).intersection(ids)
    if seen:
        raise DataError(f"{len(seen)} of the {len(ids)} photos of the {split_name} split were in the training split "
                        f"of model {model} (e.g. {min(seen)}): its metrics would be inflated",
                        hint="evaluate the model trained on this split ('bincli train' again after a re-split)")
