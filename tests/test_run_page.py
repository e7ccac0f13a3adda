"""A run's page (<run>/index.html): built from real report files (steps.report.write_report on metrics
that core.metrics computed from made-up labels and probabilities), every number and its baseline on it,
every picture a PNG inside the page, hostile names escaped, rendered by a real headless Chromium; and
the pieces an older or unfinished run lacks."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bincli.config import TrainConfig
from bincli.core.metrics import baseline_metrics, compute_metrics, metrics_from_confusion, summary
from bincli.core.plots import learning_curves_image
from bincli.errors import DataError
from bincli.hyperparameters import hyperparameters_from
from bincli.steps.html_page import esc
from bincli.steps.report import baseline_header, metric_rows, per_class_rows, write_report
from bincli.steps.run_page import RUN_PAGE, write_run_page
from helpers import check_page, chromium, render_in_chromium

LABELS, COUNTS = ["0", "1", "2", "3+"], [0, 1, 2, 3]
TRAIN_TARGETS = [0, 1, 1, 1, 2, 2, 3, 1, 1, 2, 0, 3]  # commonest: 1, so the baseline always answers "1"
SHA = "9f" * 32
HOSTILE = '<script>alert("run")</script> & <b>'
HISTORY = [{"epoch": e, "train_loss": 1.3 - 0.2 * e, "valid_loss": [1.2, 0.9, 1.0][e - 1], "train_acc": 0.3 + 0.1 * e,
            "valid_acc": [0.35, 0.5, 0.45][e - 1], "lr": 0.001 / e} for e in (1, 2, 3)]


def probabilities(targets: list[int], right: float, seed: int) -> np.ndarray:
    """Per-image class probabilities: the true class gets `right` of the mass on some images, a
    random wrong one on the others, so accuracy, log-loss and calibration are all non-trivial."""
    rng = np.random.default_rng(seed)
    probs = np.full((len(targets), len(LABELS)), 0.05)
    for i, t in enumerate(targets):
        top = t if rng.random() < right else int(rng.choice([c for c in range(len(LABELS)) if c != t]))
        probs[i, top] = 0.85
    return probs / probs.sum(axis=1, keepdims=True)


def measured(targets: list[int], right: float, seed: int, split: str) -> dict:
    m = compute_metrics(targets, probabilities(targets, right, seed), LABELS, COUNTS)
    return {**m, "split": split, "baseline": baseline_metrics(TRAIN_TARGETS, targets, LABELS, COUNTS)}


def make_run(root: Path, name: str = "train2") -> tuple[Path, dict, dict]:
    """A run folder as a finished, evaluated run leaves it: report/, config.yaml, evaluate-test/."""
    run = root / "runs" / "train2"
    test_targets = [0, 1, 1, 2, 2, 2, 3, 3, 1, 2, 1, 0, 3, 2]
    report = {**measured(test_targets, 0.7, 1, "test"), "history": HISTORY,
              "valid": summary(measured([0, 1, 2, 3, 1, 1], 0.6, 2, "valid")), "arch": "resnet18",
              "classes": "0-3+", "best_epoch": 2, "epochs_run": 3, "stop_reason": "completed",
              "hyperparameters": hyperparameters_from(TrainConfig()), "calibration": None,
              "run": name, "model_sha256": SHA}
    write_report(report, run / "report", source="train run")
    cfg = TrainConfig(epochs=3, lr=0.003)
    (run / "config.yaml").write_text("# the resolved train config of this run\n" + yaml.safe_dump(
        {"train": cfg.model_dump(mode="json"), "hyperparameters": hyperparameters_from(cfg), "from_tune": False},
        sort_keys=False))
    evaluated = {**measured([3, 2, 1, 0, 1, 2, 2, 3, 1, 1], 0.5, 3, "test"), "source": "model.tar.gz (in process)",
                 "failed": 0, "model_sha256": SHA}
    write_report(evaluated, run / "evaluate-test", source="evaluate")
    return run, report, evaluated


def images(text: str) -> list[Image.Image]:
    """Every <img> of the page, decoded from its data: URI (each must be a PNG that loads)."""
    out = []
    for uri in re.findall(r'<img [^>]*src="([^"]*)"', text):
        header, payload = uri.split(",", 1)
        assert header == "data:image/png;base64"
        im = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        assert im.format == "PNG"
        im.load()
        out.append(im)
    return out


def test_page_has_every_number_beside_its_baseline(tmp_path):
    run, report, evaluated = make_run(tmp_path, name=HOSTILE)
    page = write_run_page(run)
    assert page == run / RUN_PAGE and page.is_file()
    text = page.read_text(encoding="utf-8")
    assert not list(run.glob(f".{RUN_PAGE}*")), "the atomic write left a temp file"

    # the hostile name is shown, escaped: no tag of it reaches the page
    assert f"<h1>Run {esc(HOSTILE)}</h1>" in text and f"<title>bincli run {esc(HOSTILE)}</title>" in text
    assert "<script" not in text and "<b>" not in text
    assert SHA in text

    # each metric, the model's value and the baseline's in one row, for the train run and for evaluate
    for metrics in (report, evaluated):
        rows = metric_rows(metrics)
        assert len(rows) == 11  # per-image metrics: the count-aware rows too
        for name, model, base in rows:
            assert f"<tr><td>{esc(name)}</td><td>{model}</td><td>{base}</td></tr>" in text
        for label, n, model, base in per_class_rows(metrics):
            assert f"<tr><td>{label}</td><td>{n}</td><td>{model}</td><td>{base}</td></tr>" in text
    assert f"<th>{esc(baseline_header(report))}</th>" in text and "baseline (always 1)" in text
    assert f"{report['accuracy']:.3f}" in text and f"{evaluated['accuracy']:.3f}" in text
    # the valid summary of training, without a baseline (the report has none for it)
    assert f"<tr><td>accuracy</td><td>{report['valid']['accuracy']:.3f}</td></tr>" in text

    # the confusion matrices, titled so train's is not taken for evaluate's, with their counts
    assert "train run: test split (14 images)" in text and "evaluate: test split (10 images)" in text
    tables = re.findall(r'<table class="cm">(.*?)</table>', text)
    assert len(tables) == 2
    for metrics, cm_html in zip((report, evaluated), tables, strict=True):
        assert re.findall(r"<th>([^<]*)</th>", cm_html) == ["true \\ predicted", *LABELS, *LABELS]
        cells = [int(v) for v in re.findall(r">(\d+)<small>", cm_html)]
        assert cells == [v for row in metrics["confusion_matrix"] for v in row]

    # the learning curves and the best epoch, the config's hyperparameters
    assert "The dashed line marks epoch 2" in text
    assert '<tr class="best"><td>2</td>' in text
    assert "<tr><td>lr</td><td>0.003</td></tr>" in text and "<tr><td>epochs</td><td>3</td></tr>" in text
    assert "hyperparameters as configured" in text
    assert "Not evaluated yet" not in text

    # every picture is a PNG inside the page: curves, reliability + coverage of train and of evaluate
    assert len(images(text)) == 5
    assert check_page(page) == 5  # well-formed, no network reference


def test_evaluate_of_another_model_is_flagged(tmp_path):
    run, _, evaluated = make_run(tmp_path)
    write_report({**evaluated, "split": "valid", "model_sha256": "ab" * 32}, run / "evaluate-valid")
    text = write_run_page(run).read_text()
    assert "evaluate: valid split (10 images)" in text
    assert f"evaluate-valid measured another model (sha256 {'ab' * 32})" in text
    assert "evaluate-test measured another" not in text


def test_older_report_without_evaluate_or_config_still_renders(tmp_path):
    """A report from before runs (no run name, no sha256, no per-image metrics, no valid summary),
    never evaluated, no config.yaml: the page says what is missing instead of failing."""
    run = tmp_path / "old-run"
    cm = np.array([[2, 1, 0], [0, 3, 1], [0, 1, 2]])
    old = {**metrics_from_confusion(cm, 7.0, ["1", "2", "3"], [1, 2, 3]), "split": "valid",
           "history": HISTORY[:2], "hyperparameters": {"lr": 0.01, "epochs": 2}}
    write_report(old, run / "report")  # no best_epoch, no baseline
    page = write_run_page(run)
    text = page.read_text()
    assert "<h1>Run old-run</h1>" in text
    assert "not recorded" in text and "Not evaluated yet" in text
    assert "train run: valid split (10 images)" in text and "evaluate:" not in text
    assert [name for name, _, _ in metric_rows(old)] == ["accuracy", "log-loss", "RMSE (count)", "MAE (count)"]
    for name, model, _ in metric_rows(old):
        assert f"<tr><td>{esc(name)}</td><td>{model}</td></tr>" in text  # no baseline column
    assert "No config.yaml in this run" in text and "<tr><td>lr</td><td>0.01</td></tr>" in text
    assert "dashed line" not in text
    assert check_page(page) == 1  # the learning curves


def test_bare_report_without_history_or_figures(tmp_path):
    run = tmp_path / "r"
    (run / "report").mkdir(parents=True)
    m = metrics_from_confusion(np.array([[1, 0], [1, 2]]), 2.0, ["0", "1"], [0, 1])
    (run / "report" / "metrics.json").write_text(json.dumps(m))
    text = write_run_page(run).read_text()
    assert "No per-epoch history" in text and "<img" not in text and '<table class="cm">' in text


def test_bad_run_folder_is_one_clear_line(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    with pytest.raises(DataError, match=r"report/metrics\.json: not found; the run page needs train's report"):
        write_run_page(run)
    run2, _, _ = make_run(tmp_path / "two")
    (run2 / "config.yaml").write_text("train: [unclosed\n")
    with pytest.raises(DataError, match=r"config\.yaml: unreadable .*expected the run's YAML config"):
        write_run_page(run2)
    (run2 / "config.yaml").unlink()
    (run2 / "evaluate-test" / "metrics.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"evaluate-test/metrics\.json: expected a JSON object of metrics, got list"):
        write_run_page(run2)
    assert not (run / RUN_PAGE).exists() and not (run2 / RUN_PAGE).exists()


def test_learning_curves_mark_the_best_epoch():
    green = (44, 160, 44)
    plain = learning_curves_image(HISTORY).convert("RGB")
    marked = learning_curves_image(HISTORY, best_epoch=2).convert("RGB")
    assert plain.size == marked.size
    assert green not in {c for _, c in plain.getcolors(1 << 16)}
    # a vertical dashed line in each panel, at epoch 2 of 1..3: the middle of the plot area
    xs = {x for x in range(marked.width) if sum(marked.getpixel((x, y)) == green for y in range(60, 310)) > 60}
    assert xs and all(abs(x - 255) <= 2 or abs(x - 715) <= 2 for x in xs), sorted(xs)


@pytest.mark.skipif(chromium() is None, reason="headless Chromium not installed (Debian: apt-get install -y "
                    "chromium; 'make install-test' does it where apt is available)")
def test_page_renders_in_headless_chromium(tmp_path):
    run, _, _ = make_run(tmp_path, name=HOSTILE)
    page = write_run_page(run)
    shot = tmp_path / "shot.png"
    assert render_in_chromium(page, shot, window=(1200, 3200)) == []  # the page asks the network for nothing
    with Image.open(shot) as im:
        assert im.size == (1200, 3200)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 50  # text, tables and figures, not a blank page
        # the page's content reaches well down the window (figures rendered, not broken-image boxes)
        bottom = im.convert("L").crop((0, 2000, 1200, 3200))
        assert bottom.getextrema()[0] < 100
    if os.environ.get("RUN_PAGE_SCREENSHOT"):  # to look at it: RUN_PAGE_SCREENSHOT=/tmp/x.png
        shutil.copy(shot, os.environ["RUN_PAGE_SCREENSHOT"])
