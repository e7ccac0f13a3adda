"""`bincli predict`: count the items in bin photos, through an endpoint or an in-process model.

One request for every endpoint: SageMaker's runtime invoke_endpoint, sent by the backend's runtime
client: for backend sagemaker boto3's `sagemaker-runtime` client with its credentials; for the local
backend the standard library's http.client to the same path on the local server (backends/local/client.py).
The endpoint path imports neither torch nor boto3 (local) nor numpy, so a cold `bincli predict` answers
fast (issue 14: 0.6 s against 1.1 s with boto3). `--model model.tar.gz` instead loads
the model in this process and runs the same handler functions the endpoint runs.

Each image's answer: {"image", "count", "label", "confidence", "probabilities", "expected_count",
"median_count", "count_range", "ms"}, or {"image", "error", "status"} when the endpoint refused it.
With an expected count (an order check) also "p_expected" and "verdict" (match, mismatch, review).
The count-aware fields are decoded here again from the probabilities (core/counting.py, the same
definition the handler uses) at predict.count_range_level, so an endpoint from an older bundle
answers them too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bincli.backends.runtime import PredictError
from bincli.config import Config
from bincli.core.contract import JSON_CONTENT_TYPE
from bincli.errors import BincliError, UsageError
from bincli.steps.answering import CONTENT_TYPES, answers


def collect_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders expand to their *.jpg/*.jpeg/*.png files (sorted, not recursive); a
    list file (*.txt, *.lst) to the photos it names, one path a line (relative to the current folder)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in CONTENT_TYPES)
            if not found:
                raise UsageError(f"{p}: no .jpg, .jpeg or .png files in this folder")
            out.extend(found)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            out.extend(_listed(p))
        elif p.is_file():
            out.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    if not out:
        raise UsageError("no images given", hint="bincli predict bin.jpg [more.jpg | a folder | a list.txt ...]")
    return out


LIST_SUFFIXES = (".txt", ".lst")


def _listed(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{list_file}: cannot read this list of photos ({exc})") from None
    named = [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not named:
        raise UsageError(f"{list_file}: the list names no photos (one path a line)")
    return named


# ---------------------------------------------------------------- predictors
class InProcessPredictor:
    """The model loaded in this process (imports torch), answering through the same handler."""

    in_process = True  # answering.answers batches its forward passes instead of one request each

    def __init__(self, model_tar: Path, workdir: Path | None = None, startup_timeout: float = 120.0,
                 timeout: float = 30.0):
        from bincli.artifacts.loader import load_model, warm_up
        from bincli.steps.bounded import bounded

        self.where, self.timeout = str(model_tar), timeout  # timeout: each batch's forward pass

        def load():
            model, tmp = load_model(Path(model_tar), workdir)  # extracted inside workdir
            self._tmp = tmp
            warm_up(model)
            return model

        self._tmp = None
        try:  # deploy's start-up check (deploy.startup_timeout): a graph that never ends is refused here too
            self.model = bounded(load, startup_timeout, f"loading and warming up {model_tar}",
                                 hint="the model's graph may loop; a slow machine may need "
                                      "--set deploy.startup_timeout=300")
        except BaseException:
            self.close()
            raise

    def invoke(self, body: bytes, content_type: str) -> dict[str, Any]:
        from bincli.core import inference

        try:
            text, _ = inference.handle_request(self.model, body, content_type, JSON_CONTENT_TYPE)
        except inference.InferenceError as exc:
            raise PredictError(exc.status_code, exc.message) from None
        return json.loads(text)

    def close(self) -> None:
        import shutil

        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> InProcessPredictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_predictor(cfg: Config, endpoint: str | None = None, endpoint_url: str | None = None,
                   model: Path | None = None):
    """The predictor for these options: in-process model, or the endpoint from flags/config/state."""
    if model is not None:
        if endpoint or endpoint_url:
            raise UsageError("--model predicts in-process: do not combine it with --endpoint/--endpoint-url")
        return InProcessPredictor(Path(model), cfg.workdir, cfg.deploy.startup_timeout, cfg.predict.timeout)
    from bincli.backends import get_backend

    return get_backend(cfg).runtime_client(endpoint or cfg.predict.endpoint, endpoint_url or cfg.predict.endpoint_url)


# ---------------------------------------------------------------- the step
def predict_files(predictor, images: Sequence[Path], concurrency: int = 8) -> list[dict[str, Any]]:
    """One answer dict per image ({"image", ...}), in the order given (answering.answers)."""
    results: list[dict[str, Any]] = [{}] * len(images)
    for i, answer in answers(predictor, images, concurrency):
        results[i] = {"image": str(images[i]), **answer}
    return results


def run_predict(cfg: Config, images: Sequence[Path], endpoint: str | None = None, endpoint_url: str | None = None,
                model: Path | None = None, expected: int | None = None) -> dict[str, Any]:
    """Predict every image; the result says which failed and which differ from `expected`."""
    files = collect_images(images)
    predictor = open_predictor(cfg, endpoint, endpoint_url, model)
    try:
        results = predict_files(predictor, files, cfg.predict.concurrency)
    finally:
        predictor.close()
    for r in results:
        if "error" not in r:
            add_count_fields(r, cfg.predict, expected)
    failed = [r for r in results if "error" in r]
    verdicts = [r.get("verdict") for r in results]
    return {"source": predictor.where, "results": results, "n": len(results), "failed": len(failed),
            "expected": expected, "mismatched": verdicts.count("mismatch"), "review": verdicts.count("review")}


def add_count_fields(answer: dict[str, Any], settings, expected: int | None) -> dict[str, Any]:
    """The count-aware fields (and with `expected`, p_expected + verdict) into `answer`, in place."""
    from bincli.core import counting

    probs = answer["probabilities"]
    fields = counting.describe_answer(probs, settings.count_range_level)
    answer.update({k: v for k, v in fields.items() if k != "confidence"})
    if expected is not None:
        answer.update(counting.order_check(probs, expected, settings.match_threshold, settings.mismatch_threshold))
    return answer


def outcome_error(result: dict[str, Any], review_exit_code: int = 0) -> BincliError | None:
    """The error that makes `bincli predict` exit non-zero, or None: 1 for a failed image or a
    mismatch; `review_exit_code` (0: none) when the only doubt is verdicts of review."""
    parts = []
    if result["failed"]:
        parts.append(f"{result['failed']} of {result['n']} image(s) failed")
    if result["mismatched"]:
        parts.append(f"{result['mismatched']} of {result['n']} image(s) counted other than the expected "
                     f"{result['expected']}")
    if parts:
        return BincliError("; ".join(parts))
    if result.get("review") and review_exit_code:
        error = BincliError(f"{result['review']} of {result['n']} image(s) need a review: the model is not sure "
                            f"whether they hold {result['expected']}")
        error.exit_code = review_exit_code
        return error
    return None
