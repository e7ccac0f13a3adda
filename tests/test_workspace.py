"""The workspace id (bincli.workspace): the `bincli:workspace` tag of SageMaker resources and the
SageMaker endpoint's default name come from an id made once per workspace, not from its path."""

from __future__ import annotations

import re
import shutil
import threading

import pytest

from bincli.backends.sagemaker.session import legacy_workspace_tag, resource_tags
from bincli.config import load_config
from bincli.errors import StateError
from bincli.workspace import ID_FILE, workspace_id


def test_the_id_is_made_once_and_kept_in_the_workdir(tmp_path):
    workdir = tmp_path / "work"
    made = workspace_id(workdir)
    assert re.fullmatch(r"[0-9a-f]{12}", made) and (workdir / ID_FILE).read_text().strip() == made
    assert workspace_id(workdir) == made
    assert resource_tags(workdir, "deploy") == [{"Key": "bincli:workspace", "Value": f"work-{made}"},
                                                {"Key": "bincli:step", "Value": "deploy"}]
    assert [p.name for p in workdir.iterdir()] == [ID_FILE]  # no temp file left


def test_the_same_path_on_another_machine_is_another_workspace(tmp_path):
    workdir = tmp_path / "work"  # e.g. /home/runner/work on every CI runner
    here = resource_tags(workdir, "train")[0]["Value"]
    old_here = legacy_workspace_tag(workdir)
    shutil.rmtree(workdir)  # another runner: the same path, a fresh checkout
    there = resource_tags(workdir, "train")[0]["Value"]
    assert here != there  # one's `teardown --all` no longer matches the other's resources
    assert legacy_workspace_tag(workdir) == old_here  # (the path-based value could not tell them apart)


def test_processes_making_the_id_at_once_agree_on_one(tmp_path):
    workdir = tmp_path / "work"
    start, found = threading.Barrier(8), []

    def make():
        start.wait()
        found.append(workspace_id(workdir))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and len(set(found)) == 1


@pytest.mark.parametrize("content", ["", "not-an-id\n", "ABCDEF012345\n", "0123456789ab/x\n"])
def test_a_broken_id_file_is_one_clear_error(tmp_path, content):
    (tmp_path / ID_FILE).write_text(content)
    with pytest.raises(StateError, match=r"workspace-id: not a workspace id \(12 hex digits\)") as caught:
        workspace_id(tmp_path)
    assert "teardown --all" in caught.value.hint


def test_the_sagemaker_endpoint_name_defaults_to_one_per_workspace(tmp_path, in_tmp):  # no configs/local.yaml
    def name(workdir, **overrides):
        return load_config(None, {"workdir": workdir, **overrides}, env={}).config.deploy.name

    a, b = tmp_path / "a", tmp_path / "b"
    assert name(a, backend="sagemaker") == f"bincli-{workspace_id(a)}" == name(a, backend="sagemaker")
    assert name(b, backend="sagemaker") != name(a, backend="sagemaker")
    assert name(a, **{"backend": "sagemaker", "deploy.name": "shared-ep"}) == "shared-ep"  # set: kept
    assert name(tmp_path / "c") == "bincli-local" and not (tmp_path / "c").exists()  # local: as before
