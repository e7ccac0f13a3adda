"""Exact duplicates (same sha256) and near-duplicates (close 64-bit difference hashes), as groups.

The hash: a 64-bit difference hash (data/survey.py) over Pillow + numpy, the algorithm of
`imagehash.dhash` without its scipy/PyWavelets dependencies; it ignores brightness and size, and
64-bit ints make the all-pairs search one numpy XOR + popcount (10,000 photos: ~3 s).

Scale: the search is all pairs of DISTINCT hashes (quadratic; a block of rows at a time, so its
memory stays a few tens of MB at any size) and stops above MAX_SEARCH distinct hashes: it then
compares none and says so (`search_note`, in inspect's summary and split's report), rather than
run for most of an hour. Copies with the same hash are one point; their pairs are linear: each
id with the first of its hash, and one pair per two near hashes (their first ids).

The rule, set on ../shared/abid-sample by looking at every reported pair side by side: two
photos are near-copies when their hashes differ in at most MAX_DISTANCE bits AND both sit apart
from the crowd: every other photo is at least MARGIN bits further away than the farthest of
their near-copies. The margin matters because ABID bins look alike: near-empty cardboard bins
behind the tape grid hash within 4-6 bits of many others, while a re-photographed bin
(00084/00085) is 1 bit from its twin and 13 from anything else. Hand-checked precision on the
sample: 2 of 6 pairs were one bin without the margin, 2 of 4 with it (00084/00085, 07358/07359;
04598/06625 and 04919/08011 are different bins); 8 bits would find 4 of 11. Re-photos where
items moved (01635/01636 at 7 bits, 05592/05593 at 8) are missed: a coarse hash on dark photos
cannot tell them from look-alike bins.
"""

from __future__ import annotations

from collections.abc import Mapping

MAX_DISTANCE = 6  # bits of 64
MARGIN = 3  # bits between a photo's near-copies and the nearest other photo
MAX_SEARCH = 30_000  # distinct hashes compared all-pairs at most (~1 min on 2 busy cores: README)
_BLOCK = 1 << 21  # cells of the distance matrix at a time (uint64: 16 MB)


def exact_groups(sha_by_id: Mapping[str, str]) -> list[list[str]]:
    """Ids with the same bytes, groups of 2+ sorted by their first id."""
    by_sha: dict[str, list[str]] = {}
    for id_, sha in sha_by_id.items():
        by_sha.setdefault(sha, []).append(id_)
    return sorted((sorted(ids) for ids in by_sha.values() if len(ids) > 1), key=lambda g: g[0])


def search_note(hashes: Mapping[str, int], limit: int = MAX_SEARCH) -> str | None:
    """Why near-copies were not searched (too many distinct hashes), or None when they were."""
    n = len(set(hashes.values()))
    if n <= limit:
        return None
    return (f"near-duplicate search skipped: {n:,} distinct photo hashes, over the limit of {limit:,} "
            "(all pairs are compared; data/near_duplicates.py MAX_SEARCH); exact copies are still found")


def near_pairs(hashes: Mapping[str, int], max_distance: int = MAX_DISTANCE,
               margin: int = MARGIN, limit: int = MAX_SEARCH) -> list[tuple[str, str, int]]:
    """(id, id, bits) near-duplicate pairs by the rule above, sorted: enough pairs that their
    connected components are the groups (see the module's note on scale). Photos with the same
    hash (exact copies, or the same picture re-encoded) are one point: the caller reports exact
    copies apart. Over `limit` distinct hashes only the same-hash pairs (search_note says so)."""
    import numpy as np

    ids = sorted(hashes)
    if len(ids) < 2:
        return []
    # One row per distinct hash, so an exact copy does not count as the "crowd" of its own twin.
    distinct = sorted(set(hashes.values()))
    row_of = {h: i for i, h in enumerate(distinct)}
    members: dict[int, list[str]] = {}
    for id_ in ids:
        members.setdefault(row_of[hashes[id_]], []).append(id_)
    pairs = [(same[0], y, 0) for same in members.values() for y in same[1:]]
    if len(distinct) > limit:
        return sorted(pairs)
    values = np.array([h - (1 << 64) if h >= 1 << 63 else h for h in distinct], dtype=np.int64).view(np.uint64)
    n = len(values)
    candidates: list[tuple[int, int, int]] = []
    clean = np.zeros(n, dtype=bool)
    chunk = max(1, min(1024, _BLOCK // n))
    for start in range(0, n, chunk):
        block = np.bitwise_count(values[start:start + chunk, None] ^ values[None, :]).astype(np.int16)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = 99  # itself
        near = block <= max_distance
        inside = np.where(near, block, -1).max(axis=1)
        outside = np.where(near, 99, block).min(axis=1)
        clean[start:start + block.shape[0]] = near.any(axis=1) & (outside >= inside + margin)
        for r, c in zip(*np.nonzero(near), strict=True):
            if start + r < c:
                candidates.append((start + int(r), int(c), int(block[r, c])))
    pairs += [(members[a][0], members[b][0], d) for a, b, d in candidates if clean[a] and clean[b]]
    return sorted((min(x, y), max(x, y), d) for x, y, d in pairs)


def groups(pairs: list[tuple[str, str, int]], same_bytes: list[list[str]] | None = None) -> list[list[str]]:
    """Connected components of the pairs (and of the exact-duplicate groups): sorted id lists of 2+,
    sorted by their first id."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for a, b, _ in pairs:
        union(a, b)
    for group in same_bytes or []:
        for other in group[1:]:
            union(group[0], other)
    comps: dict[str, list[str]] = {}
    for x in list(parent):
        comps.setdefault(find(x), []).append(x)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda g: g[0])


def near_duplicate_groups(hashes: Mapping[str, int]) -> list[list[str]]:
    """The groups split keeps together: near-copies (and copies with the same hash)."""
    return groups(near_pairs(hashes))
