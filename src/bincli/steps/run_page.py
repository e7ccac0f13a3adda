"""A run's page, <run>/index.html: how the model did, on one self-contained page (CSS inline,
figures as data: URIs, no script), so it opens from disk and can be mailed.

Built only from files in the run folder:
    report/metrics.json          train's report (required): metrics on its test (or valid) split,
                                 the baseline, per-class accuracy, the history, `run`, `model_sha256`
    report/*.png                 the learning curves, reliability and accuracy-coverage figures
    evaluate-<split>/            `bincli evaluate`'s metrics.json and figures (optional)
    config.yaml                  the resolved train config: train, hyperparameters, from_tune (optional)
Older reports without `run` or `model_sha256`, a run never evaluated and a missing config.yaml
still give a page; each absent piece says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bincli.core.contract import COVERAGE_PNG, CURVES_PNG, METRICS_FILE, RELIABILITY_PNG
from bincli.core.fileio import atomic_write_text
from bincli.errors import DataError
from bincli.layout import EVALUATE_PREFIX, REPORT_DIR, RUN_CONFIG
from bincli.steps.html_page import CSS as BASE_CSS
from bincli.steps.html_page import esc, img_file, page, table
from bincli.steps.report import baseline_header, fmt_metric, metric_rows, per_class_rows

RUN_PAGE = "index.html"
TRAIN_SOURCE, EVALUATE_SOURCE = "train run", "evaluate"
HISTORY_COLUMNS = ("epoch", "train_loss", "valid_loss", "train_acc", "valid_acc", "lr")

CSS = BASE_CSS + """
.cards{display:flex;flex-wrap:wrap;gap:12px 32px;align-items:flex-start}
h3{font-size:15px;margin:12px 0 4px}figure{margin:0}figure.half{flex:1 1 440px;max-width:560px}
code{font:13px ui-monospace,monospace;word-break:break-all;background:#f4f4f4;padding:1px 4px}
table.cm td,table.cm th+th{text-align:center;min-width:52px}table.cm small{display:block;font-size:10px}
tr.best td{font-weight:600;background:#e8f5e9}details{margin:8px 0}summary{cursor:pointer}
"""


def write_run_page(run_dir: Path) -> Path:
    """Write <run_dir>/index.html from the files in run_dir (atomically); returns its path."""
    run_dir = Path(run_dir)
    report_dir = run_dir / REPORT_DIR
    report = _read_json(report_dir / METRICS_FILE, required=True)
    evaluations = []
    for folder in sorted(p for p in run_dir.glob(f"{EVALUATE_PREFIX}*") if p.is_dir()):
        metrics = _read_json(folder / METRICS_FILE, required=False)
        if metrics is not None:
            evaluations.append((folder, metrics))
    config = _read_config(run_dir / RUN_CONFIG)
    return atomic_write_text(run_dir / RUN_PAGE, render_run_page(run_dir.name, report, report_dir, evaluations,
                                                                 config))


def render_run_page(dir_name: str, report: dict[str, Any], report_dir: Path,
                    evaluations: list[tuple[Path, dict[str, Any]]], config: dict[str, Any] | None) -> str:
    name = report.get("run") or dir_name
    split = report.get("split") or "?"
    # (title, metrics, folder of its figures): train's measurement first, then each evaluate
    sources = [(f"{TRAIN_SOURCE}: {split} split", report, report_dir)]
    sources += [(f"{EVALUATE_SOURCE}: {m.get('split') or folder.name.removeprefix(EVALUATE_PREFIX)} split", m, folder)
                for folder, m in evaluations]

    parts = [f"<h1>Run {esc(name)}</h1>", _model_line(report, evaluations), _about(report, config)]

    parts.append("<h2>Metrics</h2>")
    cards = [_card(f"{title} ({m.get('n', '?')} images)", _metrics_table(m)) for title, m, _ in sources]
    if report.get("valid"):
        cards.append(_card(f"{TRAIN_SOURCE}: valid split ({report['valid'].get('n', '?')} images)",
                           _metrics_table(report["valid"])))
    parts.append(_cards(cards))
    if report.get("baseline"):
        parts.append('<p class="muted">The baseline always answers the commonest class of the train split: '
                     "the floor any model must beat.</p>")
    if not evaluations:
        parts.append('<p class="muted">Not evaluated yet: <code>bincli evaluate</code> adds its metrics here.</p>')

    parts.append("<h2>Per-class accuracy</h2>")
    parts.append(_cards([_card(title, _per_class_table(m)) for title, m, _ in sources if m.get("per_class")]))

    parts.append("<h2>Confusion matrices</h2><p>Rows: the true count; columns: the predicted count; "
                 "each cell's share of its row shades it.</p>")
    parts.append(_cards([_card(title, _confusion_table(m)) for title, m, _ in sources
                         if m.get("confusion_matrix") and m.get("labels")]))

    parts.append("<h2>Learning curves</h2>" + _curves(report, report_dir))

    figures = [(title, [(f"{kind}, {title}", folder / png) for kind, png in
                        (("reliability", RELIABILITY_PNG), ("accuracy vs coverage", COVERAGE_PNG))
                        if (folder / png).is_file()]) for title, _, folder in sources]
    if any(pngs for _, pngs in figures):
        parts.append("<h2>Calibration</h2><p>Reliability: accuracy against confidence (a calibrated model follows "
                     "the diagonal). Coverage: the accuracy of the most confident photos only, beside the "
                     "baseline's.</p>")
        parts += [f"<h3>{esc(title)}</h3>" + _cards([f'<figure class="half">{img_file(path, alt)}</figure>'
                                                     for alt, path in pngs]) for title, pngs in figures if pngs]

    parts.append("<h2>Config</h2>" + _config(report, config))
    return page(f"bincli run {name}", parts, CSS)


# ---------------------------------------------------------------- reading the run folder
def _read_json(path: Path, required: bool) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise DataError(f"{path}: not found; the run page needs train's report",
                            hint="finish (or resume) the run's training first") from None
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); expected the metrics JSON a report writes") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def _read_config(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: unreadable ({str(exc).splitlines()[0]}); expected the run's YAML config "
                        "(keys train, hyperparameters, from_tune)") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a mapping with keys train, hyperparameters, from_tune")
    return data


# ---------------------------------------------------------------- the parts
def _model_line(report: dict[str, Any], evaluations: list[tuple[Path, dict[str, Any]]]) -> str:
    sha = report.get("model_sha256")
    line = (f"<p>Model sha256: <code>{esc(sha)}</code></p>" if sha else
            '<p>Model sha256: <span class="muted">not recorded (a report from before runs named their '
            "model)</span></p>")
    for folder, m in evaluations:  # an evaluate of another model (e.g. a re-deploy) must not pass for this one's
        other = m.get("model_sha256")
        if sha and other and other != sha:
            line += (f'<p class="alarm">{esc(folder.name)} measured another model (sha256 {esc(other)}), '
                     "not this run's.</p>")
    return line


def _about(report: dict[str, Any], config: dict[str, Any] | None) -> str:
    facts = []
    if report.get("arch"):
        facts.append(f"{report['arch']}")
    if report.get("classes"):
        facts.append(f"classes {report['classes']}")
    if report.get("epochs_run") is not None:
        stop = f", {str(report['stop_reason']).replace('_', ' ')}" if report.get("stop_reason") else ""
        facts.append(f"{report['epochs_run']} epoch(s) run{stop}")
    if report.get("best_epoch") is not None:
        facts.append(f"best epoch {report['best_epoch']} (its weights are the model)")
    if config is not None and "from_tune" in config:
        facts.append("hyperparameters from tune" if config["from_tune"] else "hyperparameters as configured")
    return f"<p>{esc('; '.join(facts))}.</p>" if facts else ""


def _card(title: str, body: str) -> str:
    return f"<div><h3>{esc(title)}</h3>{body}</div>"


def _cards(cards: list[str]) -> str:
    return f'<div class="cards">{"".join(cards)}</div>' if cards else '<p class="muted">None.</p>'


def _metrics_table(metrics: dict[str, Any]) -> str:
    header = baseline_header(metrics)
    rows = metric_rows(metrics)
    if header:
        return table(["metric", "model", header], rows)
    return table(["metric", "model"], [(name, model) for name, model, _ in rows])


def _per_class_table(metrics: dict[str, Any]) -> str:
    header = baseline_header(metrics)
    rows = per_class_rows(metrics)
    if header:
        return table(["items in bin", "images", "model", header], rows)
    return table(["items in bin", "images", "model"], [row[:3] for row in rows])


def _confusion_table(metrics: dict[str, Any]) -> str:
    """The matrix as a table, each cell shaded by its share of the row (like the PNG)."""
    labels, cm = [str(label) for label in metrics["labels"]], metrics["confusion_matrix"]
    head = '<tr><th>true \\ predicted</th>' + "".join(f"<th>{esc(label)}</th>" for label in labels) + "</tr>"
    body = []
    for label, row in zip(labels, cm, strict=False):
        total = sum(row)
        cells = []
        for value in row:
            share = value / total if total else 0.0
            shade = ",".join(str(int(255 - (255 - c) * share)) for c in (31, 119, 180))
            ink = "#fff" if share > 0.5 else "#222"
            cells.append(f'<td style="background:rgb({shade});color:{ink}">{esc(value)}'
                         f"<small>{esc(f'{share:.0%}') if total else ''}</small></td>")
        body.append(f"<tr><th>{esc(label)}</th>{''.join(cells)}</tr>")
    return f'<table class="cm">{head}{"".join(body)}</table>'


def _curves(report: dict[str, Any], report_dir: Path) -> str:
    history = report.get("history") or []
    best = report.get("best_epoch")
    out = ""
    if (report_dir / CURVES_PNG).is_file():
        out += img_file(report_dir / CURVES_PNG, "learning curves: loss and accuracy per epoch")
    elif not history:
        return '<p class="muted">No per-epoch history in this report.</p>'
    if best is not None:
        out += (f"<p>The dashed line marks epoch {esc(best)}, whose weights were kept "
                "(the lowest valid loss).</p>")
    if history:
        columns = [c for c in HISTORY_COLUMNS if any(c in row for row in history)]
        rows = "".join(
            ('<tr class="best">' if row.get("epoch") == best else "<tr>")
            + "".join(f"<td>{esc(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in history)
        out += (f"<details><summary>per-epoch numbers ({len(history)} epochs)</summary><table><tr>"
                + "".join(f"<th>{esc(c)}</th>" for c in columns) + f"</tr>{rows}</table></details>")
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else fmt_metric(value, "{:.4f}")
    return "" if value is None else str(value)


def _config(report: dict[str, Any], config: dict[str, Any] | None) -> str:
    if config is None:
        hp = report.get("hyperparameters")
        if not hp:
            return f'<p class="muted">No {esc(RUN_CONFIG)} in this run and no hyperparameters in its report.</p>'
        return (f'<p class="muted">No {esc(RUN_CONFIG)} in this run; the hyperparameters its report recorded:</p>'
                + table(["hyperparameter", "value"], _pairs(hp)))
    out = ""
    hp = config.get("hyperparameters")
    if isinstance(hp, dict) and hp:
        source = " (from tune)" if config.get("from_tune") else ""
        out += f"<h3>Hyperparameters{esc(source)}</h3>" + table(["hyperparameter", "value"], _pairs(hp))
    train = config.get("train")
    if isinstance(train, dict) and train:
        out += (f"<details><summary>the train section of {esc(RUN_CONFIG)} ({len(train)} keys)</summary>"
                + table(["key", "value"], _pairs(train)) + "</details>")
    return out or f'<p class="muted">{esc(RUN_CONFIG)} holds no hyperparameters.</p>'


def _pairs(mapping: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), "null" if v is None else json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v))
            for k, v in mapping.items()]
