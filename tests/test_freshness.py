"""Freshness of finished steps: the record's inputs digest and config against the workspace now."""

from bincli.state import State
from bincli.steps.freshness import settings_changed, step_freshness, workspace_freshness


def _steps(state: State):
    return state.read()["steps"]


def test_a_resplit_leaves_train_and_evaluate_stale(tmp_path):
    state = State(tmp_path)
    state.record("download", {"images": 10}, {"seed": 0})
    state.record("split", {"manifests_dir": "a", "train": 8}, {"seed": 42})
    state.record("train", {"model": "m1"}, {"epochs": 3}, reads=("split",))
    state.record("evaluate", {"accuracy": 0.5}, {"split": "test"})
    fresh = workspace_freshness(_steps(state))
    assert [f.status for f in fresh.values()] == ["done", "done", "not run", "not run", "done", "not run", "done"]
    assert _steps(state)["train"]["inputs"].keys() == {"split"}  # no tune: not read

    state.record("split", {"manifests_dir": "b", "train": 8}, {"seed": 7})
    fresh = workspace_freshness(_steps(state))
    assert fresh["split"].status == "done"
    assert fresh["train"].status == "stale" and fresh["train"].reasons[0].startswith("split changed since")
    assert fresh["evaluate"].status == "stale"  # made from the split and from the stale model


def test_an_identical_record_keeps_downstream_current(tmp_path):
    state = State(tmp_path)
    state.record("split", {"manifests_dir": "a", "train": 8}, {})
    state.record("train", {"model": "m1"}, {})
    state.record("split", {"train": 8, "manifests_dir": "a"}, {})  # same outputs, other key order
    assert step_freshness("train", _steps(state)).status == "done"


def test_changed_settings_name_the_key_and_ignore_how_not_what(tmp_path):
    state = State(tmp_path)
    state.record("train", {"model": "m"}, {"epochs": 3, "lr": 0.01, "workers": 4})
    now = {"train": {"epochs": 5, "lr": 0.01, "workers": 8, "new_key": 1}}
    verdict = step_freshness("train", _steps(state), now)
    assert verdict.status == "stale" and verdict.reasons == ["train.epochs: 3 -> 5"]
    assert step_freshness("train", _steps(state)).status == "done"  # without config: inputs only
    assert settings_changed("tune", {"search_space": {"lr": {"low": 1e-4}}},
                            {"search_space": {"lr": {"low": 1e-3}}}) == ["tune.search_space.lr.low: 0.0001 -> 0.001"]


def test_a_removed_input_is_stale(tmp_path):
    state = State(tmp_path)
    state.record("split", {"manifests_dir": "a"}, {})
    state.record("upload", {"uri": "s3://b/p/"}, {})
    state.forget("split")
    assert step_freshness("upload", _steps(state)).reasons == ["split is gone since"]


def test_a_rerun_that_only_took_another_time_keeps_downstream_current(tmp_path):
    state = State(tmp_path)
    state.record("download", {"images": 10, "seconds": 3.2, "source": "s3://b at http://127.0.0.1:5001"}, {})
    state.record("split", {"manifests_dir": "a"}, {})
    state.record("download", {"images": 10, "seconds": 9.9, "source": "s3://b at http://127.0.0.1:6123"}, {})
    assert step_freshness("split", _steps(state)).status == "done"
    state.record("download", {"images": 11, "seconds": 9.9}, {})
    assert step_freshness("split", _steps(state)).status == "stale"
