"""Count classes: which item counts a model predicts, written as a short spec.

    "1-5"   counts 1..5; other counts are left out of the data set
    "0-5+"  counts 0..5, where the top class "5+" holds every count >= 5

One definition shared by split (filtering), training (class index) and inference (labels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*(\+?)\s*$")


@dataclass(frozen=True)
class ClassSpec:
    low: int
    high: int
    open_top: bool = False

    @classmethod
    def parse(cls, spec: str) -> ClassSpec:
        m = _SPEC.match(str(spec))
        if not m:
            raise ValueError(f"classes must look like '1-5' or '0-5+', got {spec!r}")
        low, high, plus = int(m.group(1)), int(m.group(2)), m.group(3) == "+"
        if high < low:
            raise ValueError(f"classes range {spec!r} ends before it starts")
        if high - low > 200:
            raise ValueError(f"classes range {spec!r} is too wide (at most 201 classes)")
        return cls(low, high, plus)

    def __str__(self) -> str:
        return f"{self.low}-{self.high}{'+' if self.open_top else ''}"

    @property
    def num_classes(self) -> int:
        return self.high - self.low + 1

    @property
    def counts(self) -> list[int]:
        """The count each class index stands for (the top one is a lower bound if open)."""
        return list(range(self.low, self.high + 1))

    @property
    def labels(self) -> list[str]:
        labels = [str(c) for c in self.counts]
        if self.open_top:
            labels[-1] += "+"
        return labels

    def contains(self, count: int) -> bool:
        return self.low <= count and (count <= self.high or self.open_top)

    def bucket(self, count: int) -> int:
        """The class count for a raw count (7 -> 5 with '0-5+'); raises if outside."""
        if not self.contains(count):
            raise ValueError(f"count {count} is outside classes {self}")
        return min(count, self.high)

    def index(self, count: int) -> int:
        return self.bucket(count) - self.low

    def count_of(self, index: int) -> int:
        return self.low + index
