"""Train/test leakage: evaluate refuses a model on photos it trained on; train refuses a mixed split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bincli.artifacts.bundle import package_model
from bincli.config import Config, load_config
from bincli.data.split import run_split
from bincli.errors import DataError
from bincli.state import State
from bincli.steps.evaluate import run_evaluate
from bincli.steps.leakage import check_split_is_disjoint, manifest_ids, record_training_split
from bincli.steps.train import run_train
from serving_support import make_model_dir


def _split(tmp_path: Path, abid_sample: Path, seed: int) -> Config:
    src = tmp_path / "abid"
    if not src.exists():
        for sub in ("images", "metadata"):
            (src / sub).mkdir(parents=True)
        for img in sorted((abid_sample / "images").glob("*.jpg"))[:60]:
            shutil.copy(img, src / "images" / img.name)
            shutil.copy(abid_sample / "metadata" / f"{img.stem}.json", src / "metadata" / f"{img.stem}.json")
    cfg = load_config(None, {"workdir": tmp_path / "work", "split.input": src, "split.ratios": [0.6, 0.1, 0.3],
                             "split.seed": seed}, env={}).config
    run_split(cfg.split, cfg.workdir)
    return cfg


@pytest.mark.slow
def test_evaluate_refuses_a_model_trained_on_the_test_photos_after_a_resplit(tmp_path, abid_sample):
    cfg = _split(tmp_path, abid_sample, seed=1)
    split = State(cfg.workdir).outputs("split")
    model_dir = make_model_dir(tmp_path / "model", 32, "1-5", 0)
    record_training_split(model_dir, split)  # what train does before packaging
    tar = package_model(model_dir, tmp_path / "model.tar.gz")
    first_train = set(manifest_ids(split["manifests"]["train"]))

    cfg = _split(tmp_path, abid_sample, seed=2)  # a re-split: other photos in test
    test_ids = manifest_ids(State(cfg.workdir).outputs("split")["manifests"]["test"])
    leaked = first_train.intersection(test_ids)
    assert leaked  # 36 of 60 photos trained on; some land in the new test split
    with pytest.raises(DataError, match=rf"^{len(leaked)} of the {len(test_ids)} photos of the test split were in "
                                        r"the training split of model"):
        run_evaluate(cfg, "test", model=tar)
    # the split it was trained with is fine again, and the train split may be scored deliberately
    cfg = _split(tmp_path, abid_sample, seed=1)
    assert run_evaluate(cfg, "test", model=tar)["n"] == len(manifest_ids(
        State(cfg.workdir).outputs("split")["manifests"]["test"]))
    assert run_evaluate(cfg, "train", model=tar)["split"] == "train"


def test_train_refuses_a_split_whose_manifests_share_photos(tmp_path, abid_sample):
    cfg = _split(tmp_path, abid_sample, seed=1)
    split = State(cfg.workdir).outputs("split")
    train_csv = Path(split["manifests"]["train"])
    row = train_csv.read_text().splitlines()[1]
    with open(split["manifests"]["test"], "a") as f:
        f.write(row + "\n")  # a hand-edited test manifest holding a training photo
    with pytest.raises(DataError, match=r"1 photo\(s\) of the test split are also in the train split"):
        check_split_is_disjoint(split)
    with pytest.raises(DataError, match="also in the train split"):
        run_train(cfg)  # refused before any epoch runs
    assert not (cfg.workdir / "runs").exists()


def test_train_refuses_a_split_without_valid_or_test_before_training(tmp_path, abid_sample):
    cfg = _split(tmp_path, abid_sample, seed=1)
    state = State(cfg.workdir)
    state.record("split", {**state.outputs("split"), "valid": 0, "test": 0})
    with pytest.raises(DataError, match="neither a test nor a valid set"):
        run_train(cfg)
    assert not (cfg.workdir / "runs").exists()
