"""Count-aware answers (core/counting.py): the decoding on hand-made distributions and on a real
trained model, order-check verdicts in-process and through the local endpoint, temperature scaling
and the calibration metrics against hand-computed examples."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bincli.artifacts.bundle import package_model
from bincli.artifacts.loader import load_model
from bincli.cli import app
from bincli.config import PredictConfig, load_config
from bincli.core import counting
from bincli.core.contract import MODEL_INFO_FILE, WEIGHTS_FILE
from bincli.core.metrics import baseline_metrics, compute_metrics
from bincli.steps.predict import run_predict
from serving_support import ServerThread, make_model_dir

C5 = [1, 2, 3, 4, 5]


# ---------------------------------------------------------------- decoding by hand
def test_symmetric_distribution():
    got = counting.describe([0.1, 0.2, 0.4, 0.2, 0.1], C5)
    assert got == {"expected_count": pytest.approx(3.0), "median_count": 3, "count_range": [2, 4],
                   "confidence": pytest.approx(0.4)}


def test_skewed_distribution_median_expectation_and_range_differ():
    p = [0.5, 0.1, 0.0, 0.0, 0.4]
    got = counting.describe(p, C5)
    assert got["expected_count"] == pytest.approx(0.5 * 1 + 0.1 * 2 + 0.4 * 5)  # 2.7
    assert got["median_count"] == 1  # exactly half at or below 1
    assert got["count_range"] == [1, 5]  # 0.8 needs both ends: no shorter run holds it
    assert counting.count_range(p, C5, 0.5) == [1, 1]
    assert counting.count_range(p, C5, 0.4) == [1, 1]  # the run holding more wins a tie in width


def test_ties_go_to_the_lower_count():
    p = [0.4, 0.1, 0.1, 0.4]
    counts = [0, 1, 2, 3]
    assert counting.count_range(p, counts, 0.4) == [0, 0]
    assert counting.count_range(p, counts, 0.5) == [0, 1]
    assert int(counting.argmax_counts(p, counts)[0]) == 0
    assert int(counting.median_counts([0.25, 0.25, 0.25, 0.25], counts)[0]) == 1


def test_rounding_never_shifts_the_median_or_range():
    p = [0.2, 0.3, 0.3, 0.2, 0.0]
    q = [v * (1 - 1e-9) for v in p]  # as a JSON round trip or float32 leaves them
    for probs in (p, q):
        got = counting.describe(probs, C5)
        assert got["median_count"] == 2 and got["count_range"] == [1, 3]  # 0.8 exactly; the lower of two runs
        assert got["expected_count"] == pytest.approx(2.5)


def test_open_top_and_answer_labels():
    assert counting.counts_of_labels(["0", "1", "5+"]) == [0, 1, 5]
    probs = {"0": 0.05, "1": 0.2, "2": 0.3, "3": 0.2, "4": 0.15, "5+": 0.1}
    got = counting.describe_answer(probs)
    assert got["expected_count"] == pytest.approx(0.2 + 0.6 + 0.6 + 0.6 + 0.5)  # "5+" counts as 5
    assert got["median_count"] == 2 and got["count_range"] == [1, 4]
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\]"):
        counting.count_range([1.0], [1], 0)


def test_vectorised_decoding_matches_one_by_one():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=50)
    exp, med = counting.expected_counts(probs, C5), counting.median_counts(probs, C5)
    for p, e, m in zip(probs, exp, med, strict=True):
        one = counting.describe(p, C5)
        assert one["expected_count"] == pytest.approx(e) and one["median_count"] == m


def _count_range_numpy(probs, counts, level):
    """count_range as numpy computed it before it went plain Python: every width, every start."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum()
    cum = np.concatenate([[0.0], np.cumsum(p)])
    for width in range(1, p.size + 1):
        mass = cum[width:] - cum[:-width]
        if mass.max() >= level - 1e-9:
            start = int(mass.argmax())
            return [counts[start], counts[start + width - 1]]
    return [counts[0], counts[-1]]


def _random_distributions(rng, k: int, n: int):
    """Dirichlet draws (flat to peaked), float32 round trips, and ties: equal classes, equal runs, 0s."""
    for i in range(n):
        kind = i % 4
        if kind == 0:
            p = rng.dirichlet(np.full(k, rng.choice([0.1, 1.0, 10.0])))
        elif kind == 1:
            p = rng.dirichlet(np.ones(k)).astype(np.float32).astype(np.float64)
        elif kind == 2:  # small integers: many equal classes and equal runs, exact zeros
            p = rng.integers(0, 4, k).astype(np.float64)
            p[rng.integers(k)] += 1
            p /= p.sum()
        else:  # exact binary fractions: ties that stay ties whatever the order of the sums
            p = rng.integers(0, 3, k) / 8.0
            p[rng.integers(k)] += 0.125
        yield p


@pytest.mark.parametrize("k", [1, 2, 5, 6, 7, 8, 9, 16, 17, 64, 128, 129, 200, 201])
def test_one_answer_in_plain_python_equals_the_vectorised_decoding(k):
    """describe() decodes one answer without numpy; it must agree with the numpy functions that decode
    many: the same counts and ranges (tie rules included) and confidence to the bit, the same mean."""
    rng = np.random.default_rng(k)
    counts = list(range(k)) if k % 2 else list(range(1, k + 1))
    dists = list(_random_distributions(rng, k, 120))
    batch = np.stack(dists)
    exp, med = counting.expected_counts(batch, counts), counting.median_counts(batch, counts)
    for p, e, m in zip(dists, exp, med, strict=True):
        values = p.tolist()  # what the handler and an answer's JSON hold: Python floats
        for level in (0.5, 0.8, 1.0, float(rng.uniform(0.05, 1.0))):
            one = counting.describe(values, counts, level)
            assert one["median_count"] == int(m) and type(one["median_count"]) is int
            assert one["count_range"] == _count_range_numpy(p, counts, level)
            assert one["confidence"] == float(p.max() / p.sum())
            assert one["expected_count"] == pytest.approx(float(e), rel=1e-12, abs=1e-12)
        assert int(counting.argmax_counts(p, counts)[0]) == counts[values.index(max(values))]
    labels = [*map(str, counts[:-1]), f"{counts[-1]}+"]
    answer = dict(zip(labels, dists[0].tolist(), strict=True))
    assert counting.describe_answer(answer) == counting.describe(dists[0].tolist(), counts)


def test_the_cli_path_decodes_without_numpy():
    """predict's per-answer decoding must not import numpy (0.17 s of a cold `bincli predict`)."""
    import subprocess
    import sys

    code = ("import sys\nfrom bincli.core import counting\n"
            "d = counting.describe_answer({'1': 0.2, '2': 0.5, '3': 0.3})\n"
            "c = counting.order_check({'1': 0.2, '2': 0.5, '3': 0.3}, 2)\n"
            "print(d['count_range'], c['verdict'], 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[2,", "3]", "review", "False"]  # 0.5 + 0.3 hold the 80%


# ---------------------------------------------------------------- order checks by hand
def test_verdicts():
    probs = {"1": 0.01, "2": 0.02, "3": 0.85, "4": 0.10, "5": 0.02}
    assert counting.order_check(probs, 3, 0.8, 0.05) == {"p_expected": pytest.approx(0.85), "verdict": "match"}
    assert counting.order_check(probs, 1, 0.8, 0.05)["verdict"] == "mismatch"
    assert counting.order_check(probs, 4, 0.8, 0.05) == {"p_expected": pytest.approx(0.10), "verdict": "review"}
    assert counting.order_check(probs, 9, 0.8, 0.05) == {"p_expected": 0.0, "verdict": "mismatch"}  # no class
    assert counting.verdict(0.8, 0.8, 0.05) == "match" and counting.verdict(0.05, 0.8, 0.05) == "mismatch"
    with pytest.raises(ValueError, match="thresholds"):
        counting.verdict(0.5, 0.2, 0.3)


def test_an_open_top_class_cannot_confirm_an_exact_count_above_it():
    probs = {"3": 0.01, "4": 0.01, "5+": 0.98}
    assert counting.order_check(probs, 5, 0.8, 0.05)["verdict"] == "match"
    assert counting.order_check(probs, 7, 0.8, 0.05) == {"p_expected": pytest.approx(0.98), "verdict": "review"}
    assert counting.order_check({"3": 0.98, "4": 0.01, "5+": 0.01}, 7, 0.8, 0.05)["verdict"] == "mismatch"


def test_config_defaults_are_the_cores():
    cfg = PredictConfig()
    assert cfg.count_range_level == counting.DEFAULT_RANGE_LEVEL
    assert (cfg.match_threshold, cfg.mismatch_threshold) == (counting.DEFAULT_MATCH_THRESHOLD,
                                                              counting.DEFAULT_MISMATCH_THRESHOLD)
    with pytest.raises(Exception, match="mismatch_threshold"):
        load_config(None, {"predict.match_threshold": 0.2, "predict.mismatch_threshold": 0.3}, env={})


# ---------------------------------------------------------------- temperature and calibration by hand
def test_temperature_never_raises_the_log_loss():
    rng = np.random.default_rng(1)
    for scale in (0.2, 1.0, 5.0):
        targets = rng.integers(0, 5, 200)
        logits = rng.normal(size=(200, 5)) + 2.0 * np.eye(5)[targets]
        logits *= scale  # under-, roughly and over-confident
        t, before, after = counting.fit_temperature(logits, targets)
        assert after <= before
        assert after == pytest.approx(counting.log_loss_at(logits, targets, t))
        assert before == pytest.approx(counting.log_loss_at(logits, targets, 1.0))
        if t != 1.0:
            assert after < before
    over = 5.0 * (rng.normal(size=(200, 5)) + 2.0 * np.eye(5)[targets])
    assert counting.fit_temperature(over, targets)[0] > 1.5  # over-confident logits get softened
    # logits that are already the true log-probabilities of their labels: nothing to gain
    p = np.array([0.7, 0.1, 0.1, 0.05, 0.05])
    logits = np.tile(np.log(p), (1000, 1))
    targets = np.repeat(np.arange(5), (p * 1000).astype(int))
    t, before, after = counting.fit_temperature(logits, targets)
    assert t == pytest.approx(1.0, abs=0.02) and after <= before
    assert counting.fit_temperature(np.zeros((0, 5)), np.zeros(0, int))[0] == 1.0


def test_ece_against_a_hand_example():
    # 4 photos at confidence 0.9 (3 right), 2 at 0.6 (1 right):
    # ECE = 4/6 * |0.75 - 0.9| + 2/6 * |0.5 - 0.6| = 0.1 + 0.0333
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    targets = np.array([0, 0, 0, 1, 0, 1])
    rel = counting.reliability(probs, targets)
    assert rel["ece"] == pytest.approx(0.1 + 0.1 / 3)
    used = [(round(b["low"], 6), b["n"], b["accuracy"]) for b in rel["bins"] if b["n"]]
    assert used == [(0.5, 2, 0.5), (0.8, 4, 0.75)]


def test_coverage_count_errors_and_total_by_hand():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    targets = np.array([0, 0, 0, 2])  # right, wrong, right, right; confidences 0.9, 0.7, 0.5, 0.6
    curve = counting.coverage_curve(probs, targets, (0.25, 0.5, 0.75, 1.0))
    assert [(c["n"], c["accuracy"]) for c in curve] == [(1, 1.0), (2, 0.5), (3, pytest.approx(2 / 3)), (4, 0.75)]
    # ties at the cut count at their group's accuracy: a constant answer has a flat curve
    flat = counting.coverage_curve(np.tile([0.6, 0.4], (4, 1)), [0, 0, 1, 0], (0.25, 0.5, 1.0))
    assert [c["accuracy"] for c in flat] == [0.75, 0.75, 0.75]
    counts = [1, 2, 3]
    errors = counting.count_errors(probs, targets, counts)
    assert errors["argmax"] == {"mae": 0.25, "rmse": 0.5}
    exp = probs @ np.array(counts)
    assert errors["expected"]["mae"] == pytest.approx(np.abs(exp - [1, 1, 1, 3]).mean())
    total = counting.total_count(probs, targets, counts)
    assert total["true"] == 6 and total["predicted"] == pytest.approx(exp.sum())


def test_metrics_keep_their_keys_and_add_count_aware_ones_beside_the_baseline():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    m = compute_metrics([0, 1, 1], probs, ["1", "2", "3"], [1, 2, 3])
    assert {"accuracy", "log_loss", "rmse", "mae", "per_class", "confusion_matrix"} <= set(m)
    assert m["count_errors"]["argmax"]["mae"] == pytest.approx(m["mae"])  # one definition, two paths
    assert m["count_errors"]["argmax"]["rmse"] == pytest.approx(m["rmse"])
    assert {"ece", "reliability", "coverage", "total_count"} <= set(m)
    b = baseline_metrics([0, 0, 1], [0, 1, 1], ["1", "2", "3"], [1, 2, 3])
    assert b["count_errors"]["expected"]["mae"] == pytest.approx(np.mean(np.abs(4 / 3 - np.array([1, 2, 2]))))
    assert b["total_count"]["predicted"] == pytest.approx(3 * 4 / 3)


# ---------------------------------------------------------------- order checks on a model that always answers P
P = [0.01, 0.02, 0.85, 0.10, 0.02]  # counts 1..5


@pytest.fixture(scope="module")
def sure_tar(tmp_path_factory):
    """A packaged model whose answer is P for every photo: the fc layer's weights are 0, its bias log P."""
    root = tmp_path_factory.mktemp("sure")
    model_dir = make_model_dir(root / "dir")
    state = torch.load(model_dir / WEIGHTS_FILE, weights_only=True)
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["fc.bias"] = torch.log(torch.tensor(P))
    torch.save(state, model_dir / WEIGHTS_FILE)
    return package_model(model_dir, root / "model.tar.gz")


def _bin_jpeg(tmp_path):
    from helpers import make_bin_image

    return make_bin_image(tmp_path / "bin.jpg", 3)


def _cfg(tmp_path, **extra):
    return load_config(None, {"workdir": tmp_path / "w", "predict.match_threshold": 0.8,
                              "predict.mismatch_threshold": 0.05, **extra}, env={}).config


def test_verdicts_in_process(tmp_path, sure_tar):
    img = _bin_jpeg(tmp_path)
    cfg = _cfg(tmp_path)
    for expected, verdict in ((3, "match"), (1, "mismatch"), (4, "review")):
        result = run_predict(cfg, [img], model=sure_tar, expected=expected)
        row = result["results"][0]
        assert row["count"] == 3 and row["verdict"] == verdict, expected
        assert row["p_expected"] == pytest.approx(P[expected - 1], abs=1e-6)
        assert row["expected_count"] == pytest.approx(float(np.dot(P, C5)), abs=1e-5)
        assert row["median_count"] == 3 and row["count_range"] == [3, 3]
        assert (result["mismatched"], result["review"]) == (int(verdict == "mismatch"), int(verdict == "review"))


def test_verdicts_through_the_local_endpoint_and_the_cli(tmp_path, sure_tar):
    img = _bin_jpeg(tmp_path)
    loaded, extracted = load_model(sure_tar)
    try:
        with ServerThread(loaded, name="bincli-test") as server:
            raw = run_predict(_cfg(tmp_path), [img], endpoint="bincli-test", endpoint_url=server.url)["results"][0]
            assert raw["count"] == 3 and raw["count_range"] == [3, 3] and "verdict" not in raw
            runner = CliRunner()
            base = ["predict", str(img), "-w", str(tmp_path / "w"), "--endpoint", "bincli-test", "--endpoint-url",
                    server.url, "--set", "predict.match_threshold=0.8", "--set", "predict.mismatch_threshold=0.05"]
            got = {}
            for expected in (3, 1, 4):
                r = runner.invoke(app, [*base, "--expected", str(expected), "--json"])
                got[expected] = (r.exit_code, json.loads(r.stdout)["verdict"])
            assert got == {3: (0, "match"), 1: (1, "mismatch"), 4: (0, "review")}
            r = runner.invoke(app, [*base, "--expected", "4", "--review-exit-code", "3"])
            assert r.exit_code == 3 and "need a review" in r.stderr
            assert "review" in r.stderr  # the verdict is in the line people read
    finally:
        shutil.rmtree(extracted, ignore_errors=True)


# ---------------------------------------------------------------- a real trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from bincli.core.train import get_args_parser, run
    from train_blobs import make_split

    root = tmp_path_factory.mktemp("trained")
    data = make_split(root, {"train": 6, "valid": 4, "test": 2}, "0-3", size=32)
    d = data["manifests_dir"]
    metrics = run(get_args_parser().parse_args([
        "--train", d, "--valid", d, "--test", d, "--data-root", data["data_root"], "--classes", "0-3",
        "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--workers", "0", "--log-interval", "600",
        "--loss", "soft-ordinal", "--model-dir", str(root / "model"), "--output-dir", str(root / "out"),
        "--cache-dir", str(root / "cache")]))
    return root, metrics, data


@pytest.mark.slow
def test_training_fits_a_temperature_that_never_raises_the_valid_log_loss(trained):
    root, metrics, _ = trained
    cal = metrics["calibration"]
    info = json.loads((root / "model" / MODEL_INFO_FILE).read_text())
    assert info["temperature"] == cal["temperature"] > 0
    assert cal["valid_log_loss_after"] <= cal["valid_log_loss_before"]
    assert metrics["valid"]["log_loss"] == pytest.approx(cal["valid_log_loss_after"], abs=1e-6)
    assert info["hyperparameters"]["loss"] == "soft-ordinal"
    for split in ("valid", "test", "baseline"):
        assert {"count_errors", "ece", "coverage", "total_count", "accuracy", "log_loss"} <= set(metrics[split])
    assert {"reliability.png", "accuracy-coverage.png"} <= {p.name for p in (root / "out").iterdir()}


def test_the_handler_applies_the_temperature_and_decodes_the_answer(trained, tmp_path):
    from bincli.core import inference
    from helpers import make_bin_image

    root, metrics, _ = trained
    model = inference.model_fn(root / "model")
    img = make_bin_image(tmp_path / "b.jpg", 2)
    answer = json.loads(inference.handle_request(model, img.read_bytes(), "image/jpeg")[0])
    with torch.inference_mode():
        logits = model.net(model.transform(inference.decode_image(img.read_bytes())).unsqueeze(0)).float()
    want = torch.softmax(logits / metrics["calibration"]["temperature"], dim=1)[0].tolist()
    assert list(answer["probabilities"].values()) == pytest.approx(want, abs=1e-4)
    decoded = counting.describe_answer(answer["probabilities"])
    assert answer["count_range"] == decoded["count_range"] and answer["median_count"] == decoded["median_count"]
    assert (answer["expected_count"], answer["confidence"]) == pytest.approx((decoded["expected_count"],
                                                                              decoded["confidence"]))
    assert answer["count"] == counting.counts_of_labels(list(answer["probabilities"]))[int(np.argmax(want))]
    assert math.isclose(sum(answer["probabilities"].values()), 1.0, abs_tol=1e-5)
