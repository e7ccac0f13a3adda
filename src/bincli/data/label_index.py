"""The labels a per-class sample read from the bucket's metadata, kept on disk for the next sample.

Choosing by class means reading metadata: up to 536,000 small GETs for the whole bucket. Each
label read is appended to `<data>/.labels-<source>.tsv` (`id<TAB>count` a line), so a sample with
another seed, class or size reuses them and reads only ids it has never seen. Labels only, never
bodies: the bodies of ids not picked are dropped as soon as their label is known.

One file per source (bucket + endpoint): another S3 server may hold other metadata under the same
keys. Appended in batches; a torn last line (a killed run) is skipped when read. It is a cache:
a write that fails is logged once and the sample goes on without it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

log = logging.getLogger("bincli.download")

BATCH = 1000  # labels buffered before one append


class LabelIndex:
    def __init__(self, root: Path, source: str):
        self.path = Path(root) / f".labels-{hashlib.sha256(source.encode()).hexdigest()[:12]}.tsv"
        self._lock = threading.Lock()
        self._labels: dict[str, int] = {}
        self._pending: list[str] = []
        self._broken = False
        self.reused = 0  # labels answered from the file (for the report)

    def load(self) -> LabelIndex:
        try:
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    id_, _, count = line.rstrip("\n").partition("\t")
                    if line.endswith("\n") and id_ and count.isdigit():
                        self._labels[id_] = int(count)
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s: label index unreadable (%s); reading metadata again", self.path, exc)
        return self

    def get(self, id_: str) -> int | None:
        with self._lock:
            count = self._labels.get(id_)
            if count is not None:
                self.reused += 1
            return count

    def add(self, id_: str, count: int) -> None:
        with self._lock:
            if self._labels.get(id_) == count:
                return
            self._labels[id_] = count
            self._pending.append(f"{id_}\t{count}\n")
            full = len(self._pending) >= BATCH
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
            if not lines or self._broken:
                return
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("".join(lines))
            except OSError as exc:
                self._broken = True
                log.warning("%s: cannot keep the label index (%s); the next sample reads metadata again",
                            self.path, exc.strerror or exc)

    def __len__(self) -> int:
        return len(self._labels)
