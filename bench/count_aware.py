"""Count-aware answers on the ABID sample: which loss, does temperature scaling help, which thresholds.

    .venv/bin/python bench/count_aware.py [--epochs 10] [--image-size 96] [--losses ce soft-ordinal]

Trains resnet18 from scratch (--no-pretrained) once per loss with the training entry point
(core/train.py), on the sample's classes 1-5 split 60/20/20 by class (seed 0), and prints per loss:
  - valid and test: accuracy, log-loss (after temperature scaling) and the temperature with the valid
    log-loss before/after it; MAE/RMSE of the argmax, median and expected count; ECE; the accuracy of
    the 50% most confident; the total-count error (sum of expected counts vs the true sum);
    the majority-class baseline beside them;
  - order checks on the valid split (every photo checked against every count 1..5, through the
    handler with the fitted temperature): for candidate thresholds, how often a `match` is right,
    how often a `mismatch` is right, and the share of checks left to `review`.
The default loss is the one with the lower valid log-loss; the thresholds are chosen on valid:
match_threshold = the smallest one whose matches are right >= 80% of the time, mismatch_threshold =
the largest one whose mismatches are right >= 95% of the time (each over at least 20 checks; where no
threshold has 20 matches, 0.8: calibrated probabilities make a match right about that often).
Figures move between seeds (--seed varies the training; the split stays).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bincli.core import counting

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "abid-sample"
CLASSES = (1, 2, 3, 4, 5)


def write_split(root: Path, out: Path, seed: int = 0) -> Path:
    """train/valid/test.csv (id,path,count) over the sample's classes 1-5, 60/20/20 per class."""
    with open(root / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["count"]) in CLASSES]
    rng = np.random.default_rng(seed)
    parts: dict[str, list[tuple[str, str, int]]] = {"train": [], "valid": [], "test": []}
    for c in CLASSES:
        ids = sorted(r["image_id"] for r in rows if int(r["count"]) == c)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        a, b = int(0.6 * len(ids)), int(0.8 * len(ids))
        for split, chunk in (("train", ids[:a]), ("valid", ids[a:b]), ("test", ids[b:])):
            parts[split] += [(i, f"images/{i}.jpg", c) for i in chunk]
    out.mkdir(parents=True, exist_ok=True)
    for split, items in parts.items():
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(("id", "path", "count"))
            w.writerows(items)
    return out


def train(loss: str, manifests: Path, work: Path, args: argparse.Namespace) -> tuple[dict, float]:
    from bincli.core.train import get_args_parser, run

    t0 = time.perf_counter()
    metrics = run(get_args_parser().parse_args([
        "--train", str(manifests), "--valid", str(manifests), "--test", str(manifests),
        "--data-root", str(SAMPLE), "--classes", "1-5", "--model", "resnet18", "--pretrained", "false",
        "--epochs", str(args.epochs), "--batch-size", "32", "--image-size", str(args.image_size),
        "--workers", "1", "--log-interval", "600", "--loss", loss, "--seed", str(args.seed), "--resume", "never",
        "--model-dir", str(work / loss / "model"), "--output-dir", str(work / loss / "output"),
        "--checkpoint-dir", str(work / loss / "checkpoints"), "--cache-dir", str(work / "cache")]))
    return metrics, time.perf_counter() - t0


def valid_answers(model_dir: Path, manifests: Path) -> tuple[list[dict], list[int]]:
    """The handler's answers (temperature applied) for every valid photo, and the true counts."""
    from PIL import Image

    from bincli.core import inference

    model = inference.model_fn(model_dir)
    with open(manifests / "valid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    answers = []
    for start in range(0, len(rows), 64):
        images = [Image.open(SAMPLE / r["path"]).convert("RGB") for r in rows[start:start + 64]]
        answers += inference.predict_fn(images, model)
    return answers, [int(r["count"]) for r in rows]


def threshold_table(answers: list[dict], truth: list[int]) -> tuple[list[dict], float, float]:
    """Every photo checked against every count: (rows per threshold, chosen match, chosen mismatch)."""
    checks = [(counting.p_of_count(a["probabilities"], n), n == t) for a, t in zip(answers, truth, strict=True)
              for n in CLASSES]
    p = np.array([c[0] for c in checks])
    right = np.array([c[1] for c in checks])
    rows = []
    for t in np.round(np.arange(0.02, 0.96, 0.02), 2):
        hi, lo = p >= t, p <= t
        rows.append({"t": float(t), "match_n": int(hi.sum()),
                     "match_right": float(right[hi].mean()) if hi.any() else None, "mismatch_n": int(lo.sum()),
                     "mismatch_right": float((~right[lo]).mean()) if lo.any() else None})
    # at least 20 checks behind a figure; with none, match falls back on calibration (p itself)
    match = min((r["t"] for r in rows if r["match_right"] is not None and r["match_right"] >= 0.8
                 and r["match_n"] >= 20), default=0.8)
    mismatch = max((r["t"] for r in rows if r["mismatch_right"] is not None and r["mismatch_right"] >= 0.95
                    and r["mismatch_n"] >= 20 and r["t"] < match), default=0.02)
    return rows, match, mismatch


def line(name: str, m: dict, b: dict | None) -> str:
    def g(d: dict | None, *path: object) -> float:
        v: object = d
        for k in path:
            v = v[k] if v is not None else None  # type: ignore[index]
        return float("nan") if v is None else float(v)  # type: ignore[arg-type]

    cells = [("acc", ("accuracy",)), ("logloss", ("log_loss",)), ("MAE arg", ("count_errors", "argmax", "mae")),
             ("MAE med", ("count_errors", "median", "mae")), ("MAE exp", ("count_errors", "expected", "mae")),
             ("RMSE arg", ("count_errors", "argmax", "rmse")), ("RMSE med", ("count_errors", "median", "rmse")),
             ("RMSE exp", ("count_errors", "expected", "rmse")), ("ECE", ("ece",)),
             ("acc@50%", ("coverage", 4, "accuracy")), ("total err", ("total_count", "error"))]
    model = "  ".join(f"{k} {g(m, *p):.3f}" for k, p in cells)
    base = "  ".join(f"{k} {g(b, *p):.3f}" for k, p in cells) if b else ""
    return f"  {name:<8} {model}\n  {'baseline':<8} {base}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--losses", nargs="+", default=["ce", "soft-ordinal"])
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs found in --work")
    args = ap.parse_args()
    if not (SAMPLE / "labels.csv").is_file():
        print(f"ABID sample not found at {SAMPLE}", file=sys.stderr)
        return 1
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="bincli-count-aware-"))
    manifests = write_split(SAMPLE, work / "splits", 0)  # one split; --seed varies the training only
    results = {}
    for loss in args.losses:
        saved = work / loss / "output" / "metrics.json"
        if args.reuse and saved.is_file():  # e.g. to redo only the threshold table
            metrics, seconds = json.loads(saved.read_text()), float("nan")
        else:
            metrics, seconds = train(loss, manifests, work, args)
        cal = metrics["calibration"]
        print(f"\nloss {loss}: {args.epochs} epochs at {args.image_size} px in {seconds:.0f} s, best epoch "
              f"{metrics['best_epoch']}; temperature {cal['temperature']:.3f} (valid log-loss "
              f"{cal['valid_log_loss_before']:.4f} -> {cal['valid_log_loss_after']:.4f})")
        for split in ("valid", "test"):
            base = metrics["baseline"] if metrics["baseline"]["split"] == split else None
            print(f" {split} (n={metrics[split]['n']}):\n{line('model', metrics[split], base)}")
        results[loss] = metrics
    best = min(results, key=lambda k: results[k]["valid"]["log_loss"])
    print(f"\nlowest valid log-loss: {best} ({results[best]['valid']['log_loss']:.4f})")
    answers, truth = valid_answers(work / best / "model", manifests)
    rows, match, mismatch = threshold_table(answers, truth)
    print(f"\norder checks on valid ({len(answers)} photos x {len(CLASSES)} counts), model {best}:")
    print("   t    match: n  right   mismatch: n  right")
    for r in rows[::2]:
        mr = "-" if r["match_right"] is None else f"{r['match_right']:.3f}"
        nr = "-" if r["mismatch_right"] is None else f"{r['mismatch_right']:.3f}"
        print(f"  {r['t']:.2f}  {r['match_n']:8d}  {mr:>5}  {r['mismatch_n']:11d}  {nr:>5}")
    p = np.array([counting.p_of_count(a["probabilities"], n) for a in answers for n in CLASSES])
    review = float(((p > mismatch) & (p < match)).mean())
    true_p = np.array([counting.p_of_count(a["probabilities"], t) for a, t in zip(answers, truth, strict=True)])
    print(f"chosen: match_threshold {match:.2f}, mismatch_threshold {mismatch:.2f}: {review:.1%} of checks "
          f"go to review; correct orders: {np.mean(true_p >= match):.1%} match, {np.mean(true_p <= mismatch):.1%} "
          f"wrongly mismatch")
    (work / "count_aware.json").write_text(json.dumps({"thresholds": {"match": match, "mismatch": mismatch},
                                                       "rows": rows, "best": best}, default=str))
    print(f"runs in {work}")
    return 0 if all(math.isfinite(r["valid"]["log_loss"]) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
