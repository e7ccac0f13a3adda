"""Training runs: one folder per run under `<workdir>/runs/` (train, train2, ... or --run-name).

Like `yolo train`, changing a setting starts a new run instead of failing on the old checkpoint:
a train whose settings (hyperparameters and split) match an earlier run continues that run
(resumes its checkpoint after an interrupt, or rewrites its model if it finished); any other
train gets the next free name. `<run>/config.yaml` holds the settings a run was started with,
and is what the next train compares against. The latest FINISHED run is also copied to
`<workdir>/model/model.tar.gz` and `<workdir>/report/` (CI scripts read those paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bincli.core.fileio import file_sha256
from bincli.errors import UsageError
from bincli.layout import (
    EVALUATE_PREFIX,
    MODEL_DIR,
    MODEL_TAR,
    REPORT_DIR,
    RUN_CONFIG,
    RUN_PREFIX,
    RUNS_DIR,
    under,
)

# Hyperparameters that change how fast a run goes, not what it learns: a rerun with other values
# still continues the same run (the entry point lets them change on resume).
OPERATIONAL = frozenset({"workers", "cache"})
LATEST = "last"  # --resume last: the run used most recently
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would let a final newline through


@dataclass(frozen=True)
class Run:
    name: str
    dir: Path
    existed: bool  # an earlier train used this folder (its checkpoint, if any, is resumed)


def runs_dir(workdir: Path | str) -> Path:
    return under(workdir, RUNS_DIR)


def run_dir(workdir: Path | str, name: str) -> Path:
    return under(workdir, RUNS_DIR, name)


def check_name(name: str, flag: str = "--run-name") -> str:
    if not _NAME.match(name):
        raise UsageError(f"{flag} {name!r}: use letters, digits, '.', '_' or '-' (at most 64, "
                         f"starting with a letter or digit)")
    return name


def split_fingerprint(split: Mapping[str, Any]) -> str:
    """Which photos are in which split: two runs on the same split compare equal."""
    from bincli.steps.leakage import manifest_ids

    h = hashlib.sha256()
    for name, path in sorted((split.get("manifests") or {}).items()):
        if Path(path).is_file():
            h.update(f"{name}:{','.join(sorted(manifest_ids(path)))}\n".encode())
    return h.hexdigest()[:16]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def settings(hp: Mapping[str, Any], split_fp: str) -> dict[str, Any]:
    """What makes two runs the same run: the hyperparameters (less operational ones) and the split."""
    return _plain({"hyperparameters": {k: v for k, v in hp.items() if k not in OPERATIONAL}, "split": split_fp})


def read_config(path: Path) -> dict[str, Any] | None:
    """A run's config.yaml, or None if it has none (or an unreadable one)."""
    import yaml

    try:
        data = yaml.safe_load((path / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def settings_of(path: Path) -> dict[str, Any] | None:
    data = read_config(path)
    if data is None or not isinstance(data.get("hyperparameters"), dict):
        return None
    return settings(data["hyperparameters"], str(data.get("split_fingerprint")))


def list_runs(workdir: Path | str) -> list[Path]:
    """Run folders, the most recently used last (config.yaml is rewritten at each use)."""
    root = runs_dir(workdir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / RUN_CONFIG).is_file()]
    return sorted(found, key=lambda p: ((p / RUN_CONFIG).stat().st_mtime_ns, p.name))


def next_name(workdir: Path | str) -> str:
    """train, then train2, train3, ... (one more than the highest; never reuses a number)."""
    root = runs_dir(workdir)
    taken = {p.name for p in root.iterdir()} if root.is_dir() else set()
    if RUN_PREFIX not in taken:
        return RUN_PREFIX
    numbers = [int(m.group(1)) for n in taken if (m := re.fullmatch(rf"{RUN_PREFIX}(\d+)", n))]
    return f"{RUN_PREFIX}{max([1, *numbers]) + 1}"


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """'--lr 0.001 -> 0.002; the split' : what differs between two settings, as public flags."""
    a, b = old.get("hyperparameters", {}), new.get("hyperparameters", {})
    parts = [f"--{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if old.get("split") != new.get("split"):
        parts.append("another split")
    return "; ".join(parts) or "nothing"


def choose(workdir: Path | str, wanted: dict[str, Any], *, run_name: str | None = None,
           resume: str | None = None, fresh: bool = False) -> Run:
    """The run folder this train uses. `wanted` = settings(...) of this command."""
    if run_name and resume:
        raise UsageError("--run-name names a run to train, --resume one to continue: give one of them")
    if resume:
        return _resumed(workdir, resume)
    if run_name:
        path = run_dir(workdir, check_name(run_name))
        if not path.exists():
            return Run(run_name, path, existed=False)
        had = settings_of(path)
        if had is not None and had != wanted and not fresh:
            raise UsageError(f"run {run_name!r} ({path}) was trained with other settings "
                             f"({describe_change(had, wanted)})",
                             hint=f"pass --fresh to start run {run_name!r} over with these settings, or "
                                  f"choose another --run-name")
        return Run(run_name, path, existed=True)
    for path in reversed(list_runs(workdir)):  # the latest run with these settings continues
        if settings_of(path) == wanted:
            return Run(path.name, path, existed=True)
    name = next_name(workdir)
    return Run(name, run_dir(workdir, name), existed=False)


def _resumed(workdir: Path | str, which: str) -> Run:
    runs = list_runs(workdir)
    if which == LATEST:
        if not runs:
            raise UsageError(f"--resume {LATEST}: no training run in {runs_dir(workdir)} yet",
                             hint="run 'bincli train' first")
        return Run(runs[-1].name, runs[-1], existed=True)
    path = run_dir(workdir, check_name(which, flag="--resume"))
    if read_config(path) is None:
        names = ", ".join(p.name for p in runs) or "none yet"
        raise UsageError(f"--resume {which}: no such run in {runs_dir(workdir)} (runs: {names})",
                         hint=f"--resume {LATEST} continues the latest run")
    return Run(which, path, existed=True)


def saved_hyperparameters(run: Run, split_fp: str, current: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """(hyperparameters, from_tune) a run was started with, for --resume: its own settings, not
    this command's (operational ones, like --workers, still come from this command)."""
    data = read_config(run.dir) or {}
    hp = data.get("hyperparameters")
    if not isinstance(hp, dict):
        raise UsageError(f"--resume {run.name}: {run.dir / RUN_CONFIG} records no hyperparameters",
                         hint=f"train it again with --run-name {run.name} --fresh")
    if str(data.get("split_fingerprint")) != split_fp:
        raise UsageError(f"--resume {run.name}: the run was trained on another split than the current one",
                         hint="train a new run on this split: 'bincli train' without --resume")
    return {**hp, **{k: v for k, v in current.items() if k in OPERATIONAL}}, bool(data.get("from_tune"))


def write_config(run: Run, train_cfg: Mapping[str, Any], hp: Mapping[str, Any], from_tune: bool,
                 split_fp: str) -> Path:
    """<run>/config.yaml: the resolved train config, hyperparameters and split of this run."""
    import yaml

    from bincli import __version__
    from bincli.core.fileio import atomic_write_text

    body = yaml.safe_dump(_plain({"run": run.name, "train": dict(train_cfg), "hyperparameters": dict(hp),
                                  "from_tune": from_tune, "split_fingerprint": split_fp}), sort_keys=False)
    path = run.dir / RUN_CONFIG
    run.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, f"# bincli {__version__}: the resolved train config of run {run.name}\n{body}")
    return path


def discard_unstarted(run: Run) -> bool:
    """A new run whose training never started (its folder holds only config.yaml) is removed, so a
    failed command leaves no empty run behind and the next run takes its name. True if removed."""
    if run.existed or not run.dir.is_dir() or {p.name for p in run.dir.iterdir()} != {RUN_CONFIG}:
        return False
    shutil.rmtree(run.dir, ignore_errors=True)
    return True


def clear_outputs(path: Path) -> None:
    """--fresh: what bincli wrote into the run besides its checkpoints (the backend clears those)."""
    shutil.rmtree(path / REPORT_DIR, ignore_errors=True)
    (path / MODEL_TAR).unlink(missing_ok=True)
    for old in path.glob(f"{EVALUATE_PREFIX}*"):
        shutil.rmtree(old, ignore_errors=True)


def place(src: Path, dst: Path) -> Path:
    """dst becomes the same bytes as src, atomically: a hard link where it can, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.placing"
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def publish_latest(workdir: Path | str, path: Path, report_files: Mapping[str, str]) -> Path:
    """The finished run's model.tar.gz and report files to <workdir>/model/ and <workdir>/report/."""
    from bincli.core.contract import CONFUSION_PNG, COVERAGE_PNG, CURVES_PNG, RELIABILITY_PNG

    latest = place(path / MODEL_TAR, under(workdir, MODEL_DIR, MODEL_TAR))
    names = {Path(file).name for file in report_files.values()}
    for file in report_files.values():
        place(Path(file), under(workdir, REPORT_DIR, Path(file).name))
    for stale in {CONFUSION_PNG, COVERAGE_PNG, CURVES_PNG, RELIABILITY_PNG} - names:  # an earlier run's figure
        under(workdir, REPORT_DIR, stale).unlink(missing_ok=True)
    return latest


def run_of_model(workdir: Path | str, model: Path | str | None, sha256: str | None = None) -> Path | None:
    """The run folder a model archive came from: the archive inside a run, else the run whose
    report names the same sha256; None for a model of no run here."""
    if model is None and sha256 is None:
        return None
    root = runs_dir(workdir)
    if model is not None:
        model = Path(model).resolve()
        if model.name == MODEL_TAR and model.parent.parent == root:
            return model.parent
        if sha256 is None and model.is_file():
            sha256 = file_sha256(model)
    if sha256 is None:
        return None
    for path in reversed(list_runs(workdir)):
        try:
            recorded = json.loads((path / REPORT_DIR / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(recorded, dict) and recorded.get("model_sha256") == sha256:
            return path
    return None


def write_page(path: Path) -> None:
    """<run>/index.html: the run's page (steps/run_page.py)."""
    from bincli.steps import run_page

    run_page.write_run_page(path)
