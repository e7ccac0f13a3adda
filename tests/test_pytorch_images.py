"""Which PyTorch images run the core: every version the config lets through resolves to an image
(offline, from the installed SDK's table) whose Python is at least pyproject's requires-python."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from bincli.pytorch_images import allowed_versions, core_min_python, image_versions, py_version

ROOT = Path(__file__).resolve().parents[1]


def test_the_core_minimum_is_pyprojects_requires_python():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    found = re.search(r">=\s*(\d+)\.(\d+)", spec)
    assert core_min_python() == (int(found[1]), int(found[2]))


@pytest.mark.parametrize(("scope", "instance_type"), [("training", "ml.g4dn.xlarge"), ("inference", "ml.m5.large")])
def test_every_allowed_version_resolves_to_an_image_with_a_new_enough_python(scope, instance_type):
    from sagemaker.core import image_uris

    lowest = core_min_python()
    assert allowed_versions(scope)
    for version in image_versions(scope):
        tag = py_version(version, scope)
        assert tuple(map(int, re.fullmatch(r"py(\d)(\d+)", tag).groups())) >= lowest
        uri = image_uris.retrieve(framework="pytorch", region="us-east-1", version=version, py_version=tag,
                                  instance_type=instance_type, image_scope=scope)
        assert uri.endswith(tag) or f"-{tag}-" in uri, uri


def test_inference_versions_other_than_2_6_get_their_own_python():
    """2.4's inference image is py311 (2.6's py312, which deploy used to ask of every version)."""
    assert py_version("2.4", "inference") == "py311" and py_version("2.6", "inference") == "py312"


def test_the_config_defaults_have_images():
    from bincli.config import SageMakerConfig

    defaults = SageMakerConfig()
    assert py_version(defaults.framework_version, "training")
    assert py_version(defaults.inference_framework_version, "inference")
