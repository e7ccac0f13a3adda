"""Where each step's outputs live in the workspace (`-w`, default ./bincli-work): one definition.

    <workdir>/state.json                 what each step produced (bincli.state)
    <workdir>/data/                      download: images/<id>.jpg, metadata/<id>.json
    <workdir>/splits/                    split: <fingerprint>/ (one whole split) and links to it:
                                         train.csv, valid.csv, test.csv, split-report.json
    <workdir>/runs/<run>/                one training run (steps/runs.py): train, train2, train3...
                                         or --run-name NAME; a train with other settings starts a new one
        config.yaml                      the settings it was started with (compared by the next train)
        train.log, checkpoints/, model/, output/   what the training job leaves (resume point: checkpoints/)
        report/                          train's report for this run's model (metrics.json, PNGs)
        model.tar.gz                     this run's packaged model (SageMaker layout)
        evaluate-<split>/                `bincli evaluate` of this run's model (metrics.json, PNGs, CSV)
        index.html                       the run's page
    <workdir>/model/model.tar.gz         the LATEST FINISHED run's model (a copy or hard link): deploy serves it
    <workdir>/report/                    the latest finished run's report files (metrics.json, PNGs);
                                         report/evaluate-<split>/ evaluate's of a model of no run here;
                                         report/data/ inspect's (index.html, data-summary.json);
                                         report/loadtest-<endpoint>/ loadtest's (steps.csv, PNG)
    <workdir>/cache/                     pre-resized images (kept between runs); image-facts.sqlite:
                                         per-photo figures of inspect and split, by sha256
    <workdir>/tune/                      tune-results.csv (the latest search), study.db, trial-NNN/
    <workdir>/endpoints/<name>/          a local endpoint's log and extracted model
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = "data"
SPLITS_DIR = "splits"
RUNS_DIR = "runs"
RUN_PREFIX = "train"  # runs are named train, train2, train3, ...
RUN_CONFIG = "config.yaml"
EVALUATE_PREFIX = "evaluate-"
CACHE_DIR = "cache"
MODEL_DIR = "model"
MODEL_TAR = "model.tar.gz"
REPORT_DIR = "report"
TUNE_DIR = "tune"
ENDPOINTS_DIR = "endpoints"


def under(workdir: Path | str, *parts: str) -> Path:
    """An absolute path inside the workspace (child processes may run in another folder)."""
    return Path(workdir).resolve().joinpath(*parts)
