"""Where each step's outputs live in the workspace (`-w`, default ./bincli-work): one definition.

    <workdir>/state.json                 what each step produced (bincli.state)
    <workdir>/data/                      download: images/<id>.jpg, metadata/<id>.json
    <workdir>/splits/                    split: <fingerprint>/ (one whole split) and links to it:
                                         train.csv, valid.csv, test.csv, split-report.json
    <workdir>/train/                     the training run: train.log, checkpoints/, model/, output/
    <workdir>/cache/                     pre-resized images (kept between runs); image-facts.sqlite:
                                         per-photo figures of inspect and split, by sha256
    <workdir>/model/model.tar.gz         the packaged model (SageMaker layout) deploy serves
    <workdir>/report/                    train's report; report/evaluate-<split>/ evaluate's;
                                         report/data/ inspect's (index.html, data-summary.json);
                                         report/loadtest-<endpoint>/ loadtest's (steps.csv, PNG)
    <workdir>/tune/                      tune-results.csv, study.db, trial-NNN/
    <workdir>/endpoints/<name>/          a local endpoint's log and extracted model
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = "data"
SPLITS_DIR = "splits"
RUN_DIR = "train"
CACHE_DIR = "cache"
MODEL_DIR = "model"
MODEL_TAR = "model.tar.gz"
REPORT_DIR = "report"
TUNE_DIR = "tune"
ENDPOINTS_DIR = "endpoints"


def under(workdir: Path | str, *parts: str) -> Path:
    """An absolute path inside the workspace (child processes may run in another folder)."""
    return Path(workdir).resolve().joinpath(*parts)
