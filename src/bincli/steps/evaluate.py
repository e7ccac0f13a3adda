"""`bincli evaluate`: a split's metrics, measured through the endpoint or an in-process model.

Every image of the split manifest goes through the same handler functions (input_fn,
predict_fn, output_fn): over HTTP to the endpoint, `concurrency` requests at a time, or in this
process (--model / --in-process), in batches. The answers' class probabilities become the metrics of
bincli.core.metrics (accuracy, log-loss, RMSE/MAE of the count, per-class accuracy, confusion
matrix; MAE/RMSE of the argmax, median and expected count, calibration error, accuracy against
coverage, total-count error) next to the majority-class baseline of the training split: the table
`bincli train` prints. Both paths give the same numbers.

Writes `<run>/evaluate-<split>/` in the run folder the evaluated model came from (a model of no
run here, e.g. --model elsewhere or --endpoint-url: <workdir>/report/evaluate-<split>/):
metrics.json (naming the run and the model's sha256), confusion-matrix.png, reliability.png,
accuracy-coverage.png and predictions.csv (one row per image: id, path, true and predicted count,
confidence, error, expected count, count range).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bincli.config import Config
from bincli.core.fileio import file_sha256
from bincli.core.metrics import SUMMARY
from bincli.errors import DataError, UsageError
from bincli.layout import EVALUATE_PREFIX, MODEL_TAR, REPORT_DIR, under
from bincli.state import State
from bincli.steps import runs

PREDICTIONS_FILE = "predictions.csv"


def _samples(split: dict[str, Any], name: str, spec):
    from bincli.core import data

    manifests = split.get("manifests") or {}
    if name not in manifests:
        raise UsageError(f"--split {name}: the split has no such manifest (it has: {', '.join(manifests) or 'none'})")
    try:
        samples = data.read_manifest(manifests[name], spec, split.get("data_root"))
    except (OSError, data.InputDataError) as exc:
        raise DataError(str(exc), hint="run 'bincli split' again") from None
    if not samples:
        raise DataError(f"{manifests[name]}: the {name} split is empty",
                        hint="split again with a larger share for it, e.g. --ratios 0.8 0.1 0.1")
    return samples


def _check_model_did_not_see(state: State, split: dict[str, Any], split_name: str, samples, model: Path | None,
                             endpoint_url: str | None) -> None:
    """Refuse to score a model on photos it was trained on: the model named, else the deployed one,
    else the trained one. An endpoint of another workspace (--endpoint-url) cannot be checked."""
    from bincli.artifacts.modeltar import read_model_info
    from bincli.steps.leakage import check_not_trained_on

    if model is None and endpoint_url is None:
        deployed, trained = state.outputs("deploy") or {}, state.outputs("train") or {}
        model = deployed.get("model") or trained.get("model")
    if model is None or not Path(model).is_file():
        return
    check_not_trained_on(read_model_info(Path(model)), (s.id for s in samples), split_name, str(model))


def _which_model(state: State, model: Path | None, endpoint: str | None,
                 endpoint_url: str | None) -> tuple[str | None, Path | None]:
    """(sha256 of the model evaluated, the run folder it came from): None, None where unknown (an
    endpoint of another workspace, or another endpoint than the one deployed from here)."""
    if model is not None:
        sha = file_sha256(model) if Path(model).is_file() else None
        return sha, runs.run_of_model(state.workdir, model, sha)
    deployed = state.outputs("deploy") or {}
    if endpoint_url is not None or not deployed or endpoint not in (None, deployed.get("endpoint"),
                                                                       deployed.get("name")):
        return None, None
    sha, path = deployed.get("model_sha256"), deployed.get("model")
    if sha is None and path and Path(path).is_file():
        sha = file_sha256(path)
    return sha, runs.run_of_model(state.workdir, path, sha)


def run_evaluate(cfg: Config, split_name: str = "test", endpoint: str | None = None, endpoint_url: str | None = None,
                 model: Path | None = None, in_process: bool = False,
                 progress: Callable[[int, int], None] | None = None, run: str | None = None) -> dict[str, Any]:
    """Evaluate the model on one split. `in_process` uses the trained model (state 'train': the
    latest finished run) in this process; `run` that run's model."""
    from bincli.core.classes import ClassSpec
    from bincli.core.fileio import atomic_write_text
    from bincli.steps.report import write_report

    state = State(cfg.workdir)
    split = state.require("split", needed_by="evaluate")
    spec = ClassSpec.parse(split["classes"])
    samples = _samples(split, split_name, spec)
    if run is not None:
        if model is not None:
            raise UsageError("--run and --model both name a model: give one of them")
        model = runs.run_dir(cfg.workdir, runs.check_name(run, flag="--run")) / MODEL_TAR
        if not model.is_file():
            known = ", ".join(p.name for p in runs.list_runs(cfg.workdir)) or "none yet"
            raise UsageError(f"--run {run}: no finished run of that name (no {model}; runs: {known})")
    if in_process and model is None:
        model = Path(state.require("train", needed_by="evaluate --in-process")["model"])
    _check_model_did_not_see(state, split, split_name, samples, model, endpoint_url)
    if model is not None and (endpoint or endpoint_url):
        raise UsageError("--model/--in-process evaluate in this process: "
                         "do not combine them with --endpoint/--endpoint-url")
    where, answers = _answer_all(cfg, samples, spec, endpoint, endpoint_url, model, progress)
    failed = [(s, a) for s, a in zip(samples, answers, strict=True) if "error" in a]
    sha256, run_path = _which_model(state, model, endpoint, endpoint_url)
    report = {"run": run_path.name if run_path else None, "model_sha256": sha256,
              **_score(split, split_name, spec, samples, answers, where)}

    out_dir = (run_path if run_path else under(cfg.workdir, REPORT_DIR)) / f"{EVALUATE_PREFIX}{split_name}"
    paths = write_report(report, out_dir, source="evaluate")
    predictions = out_dir / PREDICTIONS_FILE
    atomic_write_text(predictions, _predictions_csv(samples, answers, spec))
    outputs = {
        "split": split_name, "source": where, "n": report["n"], "failed": len(failed),
        "run": report["run"], "model_sha256": sha256,
        **{k: report[k] for k in SUMMARY},
        "baseline_accuracy": report["baseline"]["accuracy"] if report["baseline"] else None,
        "mae_median": report["count_errors"]["median"]["mae"],
        "rmse_expected": report["count_errors"]["expected"]["rmse"], "ece": report["ece"],
        "total_count_error": report["total_count"]["error"],
        "report_dir": str(out_dir), "metrics": paths["metrics"], "predictions": str(predictions),
        "figures": {k: v for k, v in paths.items() if k != "metrics"},
    }
    state.record("evaluate", outputs, {"split": split_name, "concurrency": cfg.predict.concurrency})
    if run_path is not None:
        runs.write_page(run_path)
    return {**outputs, "errors": [{"id": s.id, "path": str(s.path), **a} for s, a in failed], "report": report}


def _answer_all(cfg: Config, samples, spec, endpoint: str | None, endpoint_url: str | None, model: Path | None,
                progress: Callable[[int, int], None] | None) -> tuple[str, list[dict[str, Any]]]:
    """(where the answers came from, one answer per sample): the endpoint, or the model in-process."""
    from bincli.steps.answering import answers
    from bincli.steps.predict import open_predictor

    predictor = open_predictor(cfg, endpoint, endpoint_url, model)
    try:
        in_process_classes = str(predictor.model.classes) if getattr(predictor, "in_process", False) else None
        if in_process_classes not in (None, str(spec)):
            raise DataError(f"model {model} predicts classes {in_process_classes}, the split has {spec}",
                            hint="evaluate with the model trained on this split")
        found: list[dict[str, Any]] = [{}] * len(samples)
        paths = [s.path for s in samples]
        for done, (i, answer) in enumerate(answers(predictor, paths, cfg.predict.concurrency), start=1):
            found[i] = answer
            if progress is not None:
                progress(done, len(samples))
        return predictor.where, found
    finally:
        predictor.close()


def _score(split: dict[str, Any], split_name: str, spec, samples, answers: list[dict[str, Any]],
           where: str) -> dict[str, Any]:
    """The metrics of the answered images, beside the majority-class baseline of the train split."""
    import numpy as np

    from bincli.core.metrics import baseline_metrics, compute_metrics

    ok = [(s, a) for s, a in zip(samples, answers, strict=True) if "error" not in a]
    failed = [a for a in answers if "error" in a]
    if not ok:
        first = failed[0]
        raise DataError(f"no image of the {split_name} split got an answer from {where}; "
                        f"the first error: {first['status'] or ''} {first['error']}".replace("  ", " "))
    labels = list(ok[0][1]["probabilities"])
    if labels != spec.labels:
        raise DataError(f"{where} answers classes {labels}, the split has {spec.labels}",
                        hint="deploy the model trained on this split")
    probs = np.array([[a["probabilities"][label] for label in labels] for _, a in ok], dtype=np.float64)
    targets = [s.target for s, _ in ok]
    metrics = compute_metrics(targets, probs, spec.labels, spec.counts)
    train_targets = [s.target for s in _samples(split, "train", spec)] if split.get("train") else []
    baseline = baseline_metrics(train_targets, targets, spec.labels, spec.counts) if train_targets else None
    return {**metrics, "split": split_name, "baseline": baseline, "source": where, "failed": len(failed)}


def _predictions_csv(samples: Sequence, answers: Sequence[dict[str, Any]], spec) -> str:
    from bincli.core.counting import describe_answer

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "path", "count", "predicted", "confidence", "error", "expected_count", "count_range"])
    for s, a in zip(samples, answers, strict=True):
        true = spec.labels[s.target]
        if "error" in a:
            writer.writerow([s.id, str(s.path), true, "", "", f"{a.get('status') or ''} {a['error']}".strip(), "", ""])
        else:
            fields = describe_answer(a["probabilities"])  # the same decoding for every source
            lo, hi = fields["count_range"]
            writer.writerow([s.id, str(s.path), true, a["label"], f"{a['confidence']:.6f}", "",
                             f"{fields['expected_count']:.4f}", f"{lo}-{hi}"])
    return buf.getvalue()


def outcome_error(result: dict[str, Any]):
    """The error that makes `bincli evaluate` exit 1 (some images got no answer), or None."""
    from bincli.errors import BincliError

    if result["failed"]:
        first = result["errors"][0]
        return BincliError(f"{result['failed']} of {result['n'] + result['failed']} image(s) got no answer "
                           f"(e.g. {first['path']}: {first['error']}); the metrics leave them out",
                           hint=f"see {result['predictions']}")
    return None
