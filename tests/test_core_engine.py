"""core/engine.py and the loop in core/train.py: schedules, checkpoints, resume, and that it learns."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from bincli.core.engine import (
    CheckpointError,
    EarlyStopping,
    WarmupSchedule,
    build_optimizer,
    load_checkpoint,
    save_checkpoint,
)
from bincli.core.model import build_model
from bincli.core.train import RunInterrupted, get_args_parser, run
from train_blobs import make_split


def train_args(split: dict, run_dir: Path, *extra: str, cache_dir: Path | None = None):
    d = split["manifests_dir"]
    return get_args_parser().parse_args([
        "--train", d, "--valid", d, "--data-root", split["data_root"], "--classes", split["classes"],
        "--image-size", "32", "--batch-size", "6", "--workers", "0", "--log-interval", "0",
        "--model-dir", str(run_dir / "model"), "--output-dir", str(run_dir / "output"),
        "--checkpoint-dir", str(run_dir / "ckpt"), "--cache-dir", str(cache_dir or run_dir / "cache"), *extra])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    return make_split(tmp_path_factory.mktemp("tiny"), {"train": 6, "valid": 2}, "0-5", size=32)


# ---------------------------------------------------------------- parts
def test_warmup_then_cosine_step_or_constant():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer("adamw", model, lr=1.0, weight_decay=0.1)
    s = WarmupSchedule(opt, "cosine", epochs=5, warmup_epochs=1)
    assert s.step_to(0.0) == pytest.approx(0.01)
    assert s.step_to(0.5) == pytest.approx(0.505)
    assert s.step_to(1.0) == pytest.approx(1.0)
    assert s.step_to(3.0) == pytest.approx(0.5)  # halfway through the 4 cosine epochs
    assert s.step_to(4.999) < 1e-5
    assert {g["lr"] for g in opt.param_groups} == {s.lr}  # every group follows
    step = WarmupSchedule(build_optimizer("sgd", model, 1.0, 0.0), "step", epochs=7, warmup_epochs=1)
    assert [round(step.step_to(t), 6) for t in (1, 2.9, 3, 5, 6.5)] == [1.0, 1.0, 0.1, 0.01, 0.01]
    flat = WarmupSchedule(build_optimizer("sgd", model, 0.5, 0.0), "none", epochs=3, warmup_epochs=0)
    assert flat.step_to(2.5) == 0.5
    with pytest.raises(ValueError, match="choose from cosine, step, none"):
        WarmupSchedule(opt, "linear", 3, 0)
    with pytest.raises(ValueError, match="choose from adamw, sgd"):
        build_optimizer("adam", model, 1.0, 0.0)


def test_no_weight_decay_on_biases_and_norms_and_frozen_weights_left_out():
    model = build_model("resnet18", 3, freeze="backbone")
    opt = build_optimizer("adamw", model, 1e-3, 0.05)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and [p.shape for p in decay["params"]] == [model.fc.weight.shape]
    assert no_decay["weight_decay"] == 0.0 and [p.shape for p in no_decay["params"]] == [model.fc.bias.shape]


def test_checkpoints_are_atomic_and_best_is_a_copy(tmp_path):
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, tmp_path, is_best=True)
    save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, tmp_path, is_best=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp files, no per-epoch files
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 and torch.equal(best["w"], torch.ones(3)) and best["format"] == 1
    save_checkpoint({"epoch": 3}, tmp_path, is_best=True)
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"broken\.pt: not a readable bincli checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")


def test_early_stopping_counts_epochs_without_a_lower_valid_loss():
    stop = EarlyStopping(patience=2)
    assert [stop.update(v) for v in (1.0, 0.9, 0.95, 0.9)] == [True, True, False, False]
    assert stop.should_stop and stop.best == 0.9
    never = EarlyStopping(patience=0)
    for v in (1.0, 2.0, 3.0):
        never.update(v)
    assert not never.should_stop


@pytest.mark.slow
# ---------------------------------------------------------------- resume
def test_resume_after_epoch_1_continues_at_epoch_2_as_if_never_stopped(tmp_path, tiny, capsys):
    cache = tmp_path / "cache"
    full = run(train_args(tiny, tmp_path / "full", "--epochs", "2", cache_dir=cache))

    def ctrl_c_after_epoch_1(epoch, row):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; the loop stops after this epoch's checkpoint

    with pytest.raises(RunInterrupted) as stopped:
        run(train_args(tiny, tmp_path / "cut", "--epochs", "2", cache_dir=cache), on_epoch_end=ctrl_c_after_epoch_1)
    assert (stopped.value.epoch, stopped.value.sample, stopped.value.signum) == (2, 0, signal.SIGINT)
    ckpt = load_checkpoint(tmp_path / "cut" / "ckpt" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["next"] == {"epoch": 2, "sample": 0} and not ckpt["finished"]
    steps_per_epoch = 36 // 6
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {steps_per_epoch}
    assert not (tmp_path / "cut" / "model" / "model.pth").exists()

    seen = []
    resumed = run(train_args(tiny, tmp_path / "cut", "--epochs", "2", cache_dir=cache),
                  on_epoch_end=lambda epoch, row: seen.append(epoch))
    assert seen == [2]  # continued at epoch 2
    after = load_checkpoint(tmp_path / "cut" / "ckpt" / "last.pt")
    assert {int(s["step"]) for s in after["optimizer"]["state"].values()} == {2 * steps_per_epoch}  # same Adam state
    # ...and ends exactly where the uninterrupted run ended: same optimizer state, schedule, data order, RNG
    a = torch.load(tmp_path / "full" / "model" / "model.pth", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model" / "model.pth", weights_only=True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    for x, y in zip(full["history"], resumed["history"], strict=True):
        assert x["epoch"] == y["epoch"] and x["valid_loss"] == pytest.approx(y["valid_loss"], rel=1e-5)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if line.startswith("epoch=")] == ["epoch=1", "epoch=2"] * 2


@pytest.mark.slow
def test_finished_run_has_nothing_to_resume_and_changed_settings_are_refused(tmp_path, tiny, caplog):
    base = train_args(tiny, tmp_path, "--epochs", "1")
    first = run(base)
    (tmp_path / "model" / "model.pth").unlink()
    for image in Path(tiny["data_root"], "images").iterdir():  # the same data, copied again (new mtimes)
        os.utime(image, (1e9, 1e9))
    seen = []
    with caplog.at_level("INFO", logger="bincli.train"):
        again = run(base, on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [] and "nothing to resume" in caplog.text
    assert (tmp_path / "model" / "model.pth").is_file()  # the model is written again from best.pt
    assert again["valid"]["accuracy"] == first["valid"]["accuracy"]
    with pytest.raises(CheckpointError, match=r"other settings \(--lr 0\.001 -> 0\.01\)"):
        run(train_args(tiny, tmp_path, "--epochs", "1", "--lr", "0.01"))
    more = run(train_args(tiny, tmp_path, "--epochs", "2", "--workers", "1"), on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [2] and more["epochs_run"] == 2  # epochs (and workers) may change: the run is extended


@pytest.mark.slow
def test_a_run_sweeps_the_temp_files_a_killed_run_left(tmp_path, tiny):
    """SIGKILL mid-write leaves `.last.pt.<random>.tmp` (atomic_write_bytes' temp) for good: the
    next run removes such leftovers of its own files when it starts; other files stay."""
    leftovers = [tmp_path / "ckpt" / ".last.pt.k9x_2abc.tmp", tmp_path / "ckpt" / ".best.pt.q1w2e3r4.tmp",
                 tmp_path / "model" / ".model.pth.a1b2c3d4.tmp", tmp_path / "output" / ".metrics.json.zz99yy88.tmp"]
    others = [tmp_path / "ckpt" / "notes.tmp", tmp_path / "ckpt" / ".other.pt.a1b2c3d4.tmp",
              tmp_path / "output" / "history.jsonl.tmp"]
    for path in leftovers + others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a checkpoint")
    during_epoch_1 = []
    run(train_args(tiny, tmp_path, "--epochs", "1"),
        on_epoch_end=lambda epoch, row: during_epoch_1.extend(p for p in leftovers if p.exists()))
    assert during_epoch_1 == []  # gone when the run started, not only at its end
    assert not any(p.exists() for p in leftovers)
    assert all(p.read_bytes() == b"half a checkpoint" for p in others)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        ".other.pt.a1b2c3d4.tmp", "best.pt", "last.pt", "notes.tmp"]


# ---------------------------------------------------------------- it learns
@pytest.mark.slow
def test_learns_to_count_blobs(tmp_path):
    """0..5 bright blobs on dark noise, 32 px, resnet18 from scratch: high accuracy in a short CPU run."""
    data = make_split(tmp_path, {"train": 60, "valid": 20}, "0-5", size=32, seed=1)
    args = train_args(data, tmp_path / "run", "--epochs", "10", "--batch-size", "32", "--lr", "0.004",
                      "--log-interval", "30")
    metrics = run(args)
    valid, base = metrics["valid"], metrics["baseline"]
    assert base["accuracy"] == pytest.approx(1 / 6)
    assert valid["accuracy"] >= 0.8, metrics["history"]
    assert valid["rmse"] < 0.6 and valid["log_loss"] < math.log(6) / 2
    losses = [row["train_loss"] for row in metrics["history"]]
    assert losses[-1] < 0.6 * losses[0]


def test_atomic_writes_leave_files_others_can_read(tmp_path):
    import os

    from bincli.core.fileio import atomic_write_text

    old = os.umask(0o022)  # the usual umask; test_cli_habits.py covers others
    try:
        path = atomic_write_text(tmp_path / "train.csv", "id,path,count\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and path.read_text() == "id,path,count\n"


@pytest.mark.parametrize(("amp", "device", "capability", "expected"), [
    ("auto", "cuda", (7, 5), torch.float16),   # T4 (ml.g4dn, the default): bf16 only emulated there
    ("auto", "cuda", (7, 0), torch.float16),   # V100 (ml.p3)
    ("auto", "cuda", (8, 0), torch.bfloat16),  # A100
    ("auto", "cuda", (8, 6), torch.bfloat16),  # A10G (ml.g5)
    ("auto", "cuda", (9, 0), torch.bfloat16),  # H100/H200
    ("off", "cuda", (9, 0), None),
    ("auto", "cpu", None, None),
    ("on", "cpu", None, torch.bfloat16),
])
def test_amp_picks_bf16_only_where_the_gpu_has_it(amp, device, capability, expected):
    from bincli.core.engine import choose_amp_dtype

    assert choose_amp_dtype(amp, device, capability) == expected



def test_soft_ordinal_targets_spread_onto_neighbouring_counts():
    from bincli.core.engine import SoftOrdinalLoss, build_criterion

    loss = build_criterion("soft-ordinal", [1, 2, 3, 4, 5])
    q = loss.targets
    assert torch.allclose(q.sum(dim=1), torch.ones(5))
    assert q[2].argmax() == 2 and q[2, 1] == q[2, 3] > q[2, 0] == q[2, 4]  # symmetric, peaked at the truth
    # a near miss costs less than a far one, which plain cross-entropy cannot tell apart
    near = torch.tensor([[0.0, 0.0, 0.0, 4.0, 0.0]])
    far = torch.tensor([[0.0, 0.0, 0.0, 0.0, 4.0]])
    target = torch.tensor([2])
    assert loss(near, target) < loss(far, target)
    ce = build_criterion("ce", [1, 2, 3, 4, 5])
    assert ce(near, target) == pytest.approx(ce(far, target).item())
    smoothed = SoftOrdinalLoss([1, 2, 3], label_smoothing=0.3)
    assert torch.allclose(smoothed.targets.min(), torch.tensor(0.1), atol=0.05)
    with pytest.raises(ValueError, match="unknown loss 'hinge'; choose from ce, soft-ordinal"):
        build_criterion("hinge", [1, 2])


def test_best_is_a_copy_where_the_folder_takes_no_hard_links(tmp_path, monkeypatch):
    from bincli.core import engine

    def no_links(src, dst):
        raise OSError("links not supported here")

    monkeypatch.setattr(engine.os, "link", no_links)
    last = engine.save_checkpoint({"model": {"w": torch.arange(4.0)}, "epoch": 1}, tmp_path, is_best=True)
    best = tmp_path / "best.pt"
    assert best.read_bytes() == last.read_bytes() and best.stat().st_ino != last.stat().st_ino
    assert torch.equal(engine.load_checkpoint(best)["model"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp file left
