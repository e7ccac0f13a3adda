"""Reading a count out of class probabilities: ONE definition for the handler, predict and evaluation.

A model answers a probability per count class. Each business decision wants a different number
from that same distribution:

    count           the most likely count (argmax): the best single guess for one bin
    expected_count  the mean of the distribution: unbiased, so it is the figure to SUM over many
                    bins (stock planning); an open top class ("5+") counts as its lower bound
    median_count    the smallest count holding at least half of the probability at or below it:
                    the single guess with the smallest expected absolute error
    count_range     [low, high]: the narrowest run of consecutive counts holding at least `level`
                    of the probability (ties: the one holding more, then the lower one)
    confidence      the probability of `count` (the top class): how sure the argmax is
    p_expected      for an order check, the probability of the class holding the expected count;
                    `verdict` turns it into match / mismatch / review with two thresholds

Also the calibration tools the trainer and evaluation share: temperature fitting (divide the
logits by one scalar T chosen to minimise the valid log-loss), the expected calibration error,
and accuracy against coverage. No torch: the CLI imports this. One answer is decoded in plain
Python (K <= 201 classes: loops beat numpy's per-call overhead, and a cold `bincli predict` skips
numpy's 0.17 s import); numpy is imported inside the functions that work over many images.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

DEFAULT_RANGE_LEVEL = 0.8
# Order-check thresholds on p_expected (predict.match_threshold / mismatch_threshold), chosen on the
# valid split of a real model (bench/count_aware.py: resnet18 from scratch, 96 px, 8 epochs, ABID sample):
# p <= 0.10 was a wrong count 96% of the time (225 of 1,275 checks); no threshold gave 20 matches
# right 80% of the time, so match keeps 0.8, where calibrated probabilities are right ~80% of the time.
DEFAULT_MATCH_THRESHOLD = 0.8
DEFAULT_MISMATCH_THRESHOLD = 0.1
VERDICTS = ("match", "mismatch", "review")
ECE_BINS = 10
COVERAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_TOL = 1e-9  # probabilities from JSON or float32 sum to 1 only up to rounding


def counts_of_labels(labels: Sequence[str]) -> list[int]:
    """["1", ..., "5+"] -> [1, ..., 5]: the count each label stands for (an open top: its lower bound)."""
    return [int(str(label).rstrip("+")) for label in labels]


def _as_2d(probs: Any) -> np.ndarray:
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    return p[None, :] if p.ndim == 1 else p


# ---------------------------------------------------------------- decoding one answer (plain Python)
def _total(p: Sequence[float]) -> float:
    """sum(p) added in numpy's order (its pairwise summation), so the normalised probabilities, and with
    them median, range and confidence, are bit for bit those of the vectorised functions."""
    n = len(p)
    if n < 8:
        total = 0.0
        for x in p:
            total += x
        return total
    if n <= 128:  # 8 accumulators, combined as a tree, then the rest one by one
        r = list(p[:8])
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += p[i + j]
            i += 8
        total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for x in p[i:]:
            total += x
        return total
    half = n // 2 - (n // 2) % 8
    return _total(p[:half]) + _total(p[half:])


def expected_count(probs: Sequence[float], counts: Sequence[int]) -> float:
    """The mean count of one answer (renormalised: rounding never shifts it)."""
    p = [float(x) for x in probs]
    s = 0.0
    for x, c in zip(p, counts, strict=True):
        s += x * c
    return s / _total(p)


def median_count(probs: Sequence[float], counts: Sequence[int]) -> int:
    """The median count of one answer: the first class whose cumulative probability reaches half."""
    p = [float(x) for x in probs]
    total, cum, below = _total(p), 0.0, 0
    for x in p:
        cum += x
        below += cum / total < 0.5 - _TOL
    return int(counts[min(below, len(p) - 1)])


def count_range(probs: Sequence[float], counts: Sequence[int], level: float = DEFAULT_RANGE_LEVEL) -> list[int]:
    """[low, high]: the fewest consecutive classes holding >= level of the probability.

    Among equally narrow runs the one holding more wins, then the lower one. The narrowest width comes
    from two pointers (a run's end never moves left as its start moves right), then one pass at that
    width picks the run: O(K) for any level."""
    if not 0 < level <= 1:
        raise ValueError(f"count range level must be in (0, 1], got {level}")
    p = [float(x) for x in probs]
    total = _total(p)
    cum, c = [0.0], 0.0
    for x in p:
        c += x / total
        cum.append(c)
    k, need = len(p), level - _TOL
    width, end = None, 0
    for start in range(k):  # the run start..end-1 holds cum[end] - cum[start]
        end = max(end, start + 1)
        while end <= k and cum[end] - cum[start] < need:
            end += 1
        if end > k:
            break  # no run from here (nor from any later start) holds enough
        if width is None or end - start < width:
            width = end - start
    if width is None:
        return [int(counts[0]), int(counts[-1])]  # only with NaN: numpy's version answered this too
    best, first = cum[width] - cum[0], 0
    for start in range(1, k - width + 1):
        mass = cum[start + width] - cum[start]
        if mass > best:  # strictly: the lower of equal runs
            best, first = mass, start
    return [int(counts[first]), int(counts[first + width - 1])]


def describe(probs: Sequence[float], counts: Sequence[int], level: float = DEFAULT_RANGE_LEVEL) -> dict[str, Any]:
    """The count-aware fields of one answer (beside count, label and probabilities)."""
    p = [float(x) for x in probs]
    return {
        "expected_count": expected_count(p, counts),
        "median_count": median_count(p, counts),
        "count_range": count_range(p, counts, level),
        "confidence": max(p) / _total(p),
    }


# ---------------------------------------------------------------- decoding (vectorised over images)
def expected_counts(probs: Any, counts: Sequence[int]) -> np.ndarray:
    """Mean count per image, (N,) from (N, K) probabilities (renormalised: rounding never shifts it)."""
    import numpy as np

    p = _as_2d(probs)
    return (p @ np.asarray(counts, dtype=np.float64)) / p.sum(axis=1)


def median_counts(probs: Any, counts: Sequence[int]) -> np.ndarray:
    """Median count per image: the first class whose cumulative probability reaches half."""
    import numpy as np

    p = _as_2d(probs)
    cum = np.cumsum(p, axis=1) / p.sum(axis=1, keepdims=True)
    idx = (cum < 0.5 - _TOL).sum(axis=1)
    return np.asarray(counts, dtype=np.int64)[np.minimum(idx, p.shape[1] - 1)]


def argmax_counts(probs: Any, counts: Sequence[int]) -> np.ndarray:
    """Most likely count per image (ties: the lower count, as numpy's argmax and the handler)."""
    import numpy as np

    return np.asarray(counts, dtype=np.int64)[_as_2d(probs).argmax(axis=1)]


def describe_answer(probabilities: Mapping[str, float], level: float = DEFAULT_RANGE_LEVEL) -> dict[str, Any]:
    """describe() from an answer's {"label": probability} (what a client holds)."""
    labels = list(probabilities)
    return describe([float(probabilities[k]) for k in labels], counts_of_labels(labels), level)


# ---------------------------------------------------------------- an answer's shape
_LABEL = re.compile(r"^\d{1,6}\+?\Z")


def answer_problem(answer: Any) -> str | None:
    """Why `answer` is not one photo's answer as the handler makes it (describe(): a "count" and
    "probabilities" {label: p} over labels "0".."4", "5+"), or None. Clients check an endpoint's
    answers with it before decoding them (anything else is one failed photo, never a traceback)."""
    if not isinstance(answer, dict):
        return f"expected a JSON object, got {type(answer).__name__}"
    probs = answer.get("probabilities")
    if not isinstance(probs, dict) or not probs:
        return "expected 'probabilities' to be a non-empty object of label: probability"
    for label, p in probs.items():
        if not _LABEL.match(label):
            return f"probabilities: label {label[:20]!r} is not a count (expected e.g. '3' or '5+')"
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or not 0 <= p <= 1:
            return f"probabilities[{label!r}] is {str(p)[:20]}; expected a number in [0, 1]"
    count = answer.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        return f"'count' is {str(count)[:20]}; expected a whole number >= 0"
    return None


# ---------------------------------------------------------------- order checks
def p_of_count(probabilities: Mapping[str, float], expected: int) -> float:
    """The probability of the class holding `expected` (0 when no class holds it). An open top
    class ("5+") holds every count from its own up, so for those it is P(count >= 5)."""
    labels = list(probabilities)
    total = sum(float(v) for v in probabilities.values()) or 1.0
    for label, count in zip(labels, counts_of_labels(labels), strict=True):
        if count == expected or (label.endswith("+") and expected > count):
            return float(probabilities[label]) / total
    return 0.0


def verdict(p_expected: float, match_threshold: float = DEFAULT_MATCH_THRESHOLD,
            mismatch_threshold: float = DEFAULT_MISMATCH_THRESHOLD, exact: bool = True) -> str:
    """match when p_expected >= match_threshold, mismatch when <= mismatch_threshold, else review.
    `exact` False (the expected count is inside an open top class but not its own count): the model
    cannot confirm that exact count, so at best review."""
    if not 0 <= mismatch_threshold < match_threshold <= 1:
        raise ValueError(f"thresholds must satisfy 0 <= mismatch ({mismatch_threshold}) < match "
                         f"({match_threshold}) <= 1")
    if p_expected <= mismatch_threshold:
        return "mismatch"
    if p_expected >= match_threshold and exact:
        return "match"
    return "review"


def order_check(probabilities: Mapping[str, float], expected: int, match_threshold: float = DEFAULT_MATCH_THRESHOLD,
                mismatch_threshold: float = DEFAULT_MISMATCH_THRESHOLD) -> dict[str, Any]:
    """{"p_expected", "verdict"} for "does this bin hold exactly `expected` items?"."""
    p = p_of_count(probabilities, expected)
    exact = expected in counts_of_labels(list(probabilities))  # inside "5+" but above 5: not exact
    return {"p_expected": p, "verdict": verdict(p, match_threshold, mismatch_threshold, exact)}


# ---------------------------------------------------------------- temperature scaling
def softmax(logits: Any, temperature: float = 1.0) -> np.ndarray:
    import numpy as np

    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss_at(logits: Any, targets: Any, temperature: float = 1.0) -> float:
    """Mean cross-entropy of the true class with the logits divided by `temperature`."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64) / temperature
    t = np.asarray(targets, dtype=np.int64)
    top = z.max(axis=1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float((lse - z[np.arange(t.size), t]).mean())


def fit_temperature(logits: Any, targets: Any, low: float = 0.05, high: float = 20.0,
                    steps: int = 80) -> tuple[float, float, float]:
    """(T, log-loss at T=1, log-loss at T): golden-section search over log T in [low, high].

    T stays 1.0 unless it lowers the log-loss on these (valid) logits, so fitting never raises it.
    The log-loss of a temperature is convex in 1/T, so one minimum: golden section finds it."""
    import numpy as np

    if np.asarray(targets).size == 0:
        return 1.0, float("nan"), float("nan")
    base = log_loss_at(logits, targets, 1.0)
    if not math.isfinite(base):
        return 1.0, base, base
    a, b = math.log(low), math.log(high)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = log_loss_at(logits, targets, math.exp(c)), log_loss_at(logits, targets, math.exp(d))
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = log_loss_at(logits, targets, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = log_loss_at(logits, targets, math.exp(d))
    t, best = (math.exp(c), fc) if fc < fd else (math.exp(d), fd)
    return (t, base, best) if best < base else (1.0, base, base)


# ---------------------------------------------------------------- calibration and coverage
def reliability(probs: Any, targets: Any, bins: int = ECE_BINS) -> dict[str, Any]:
    """Confidence (top probability) in `bins` equal-width bins: per bin n, mean confidence and accuracy,
    and the expected calibration error ECE = sum over bins of n_b/N * |accuracy_b - confidence_b|."""
    import numpy as np

    p = _as_2d(probs)
    t = np.asarray(targets, dtype=np.int64)
    conf = p.max(axis=1) / p.sum(axis=1)
    right = (p.argmax(axis=1) == t).astype(np.float64)
    # bin b holds (b/bins, (b+1)/bins]; a confidence of 0 goes to the first bin
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        n = int(m.sum())
        acc = float(right[m].mean()) if n else None
        mean_conf = float(conf[m].mean()) if n else None
        if n:
            ece += n / max(t.size, 1) * abs(acc - mean_conf)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "n": n, "confidence": mean_conf, "accuracy": acc})
    return {"ece": float(ece) if t.size else float("nan"), "bins": rows}


def coverage_curve(probs: Any, targets: Any, coverages: Sequence[float] = COVERAGES) -> list[dict[str, Any]]:
    """Accuracy of the k% most confident images, for each k in `coverages` (a review queue takes the rest).
    Images tied in confidence at the cut count with their group's mean accuracy (the expectation over
    any order of the ties), so a constant-confidence answer (the baseline) gives a flat curve."""
    import numpy as np

    p = _as_2d(probs)
    t = np.asarray(targets, dtype=np.int64)
    conf = p.max(axis=1) / p.sum(axis=1)
    order = np.argsort(-conf, kind="stable")
    conf_s, right_s = conf[order], (p.argmax(axis=1) == t)[order].astype(np.float64)
    out = []
    for k in coverages:
        n = max(1, math.ceil(k * t.size - _TOL)) if t.size else 0
        if not n:
            out.append({"coverage": float(k), "n": 0, "accuracy": float("nan"), "min_confidence": None})
            continue
        cut = conf_s[n - 1]
        above, group = conf_s > cut, conf_s == cut
        hits = right_s[above].sum() + (n - above.sum()) * right_s[group].mean()
        out.append({"coverage": float(k), "n": n, "accuracy": float(hits / n), "min_confidence": float(cut)})
    return out


def count_errors(probs: Any, targets: Any, counts: Sequence[int]) -> dict[str, dict[str, float]]:
    """MAE and RMSE of the count read three ways: argmax, median, expectation."""
    import numpy as np

    t = np.asarray(counts, dtype=np.float64)[np.asarray(targets, dtype=np.int64)]
    out = {}
    for name, guess in (("argmax", argmax_counts(probs, counts)), ("median", median_counts(probs, counts)),
                        ("expected", expected_counts(probs, counts))):
        err = np.asarray(guess, dtype=np.float64) - t
        out[name] = {"mae": float(np.abs(err).mean()) if t.size else float("nan"),
                     "rmse": float(math.sqrt((err**2).mean())) if t.size else float("nan")}
    return out


def total_count(probs: Any, targets: Any, counts: Sequence[int]) -> dict[str, float]:
    """The split's total: sum of expected counts vs the true sum (what stock planning would book)."""
    import numpy as np

    true = float(np.asarray(counts, dtype=np.float64)[np.asarray(targets, dtype=np.int64)].sum())
    predicted = float(expected_counts(probs, counts).sum()) if np.asarray(targets).size else 0.0
    return {"predicted": predicted, "true": true, "error": predicted - true,
            "relative_error": (predicted - true) / true if true else float("nan")}
