"""Config: defaults match configs/local.yaml, precedence, and errors that name source, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bincli.config import Config, flatten, load_config, parse_set_options
from bincli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LOCAL_YAML = ROOT / "configs" / "local.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_local_yaml_documents_every_key_with_the_builtin_defaults():
    from_file = _leaves(yaml.safe_load(LOCAL_YAML.read_text()))
    defaults = flatten(Config())
    assert set(from_file) == set(defaults), "configs/local.yaml and config.py must list the same keys"
    loaded = flatten(load_config(LOCAL_YAML, env={}).config)
    assert loaded == defaults, "configs/local.yaml must hold the built-in defaults"


def test_every_key_in_local_yaml_has_a_comment():
    for line in LOCAL_YAML.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "# (" in line, f"undocumented key: {line!r}"


def test_precedence_defaults_file_env_flag(tmp_path):
    path = _write(tmp_path, "split:\n  seed: 1\n  classes: 0-5+\ntrain:\n  lr: 0.01\n")
    env = {"BINCLI_SPLIT__SEED": "2", "BINCLI_TRAIN__EPOCHS": "7"}
    loaded = load_config(path, overrides=parse_set_options(["split.seed=3"]), env=env)
    cfg = loaded.config
    assert cfg.split.seed == 3 and loaded.source_of("split.seed") == "flag --set"
    assert cfg.train.epochs == 7 and loaded.source_of("train.epochs") == "env BINCLI_TRAIN__EPOCHS"
    assert cfg.train.lr == 0.01 and loaded.source_of("train.lr") == str(path)
    assert cfg.split.classes == "0-5+"
    assert cfg.train.batch_size == 32 and loaded.source_of("train.batch_size") == "default"


def test_ratios_must_sum_to_one_names_file_key_and_value(tmp_path):
    path = _write(tmp_path, "split:\n  ratios: [0.8, 0.1, 0.2]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value) == f"{path}: split.ratios: must sum to 1.0, got 1.1"


def test_unknown_key_suggests_the_closest(tmp_path):
    path = _write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value) == f"{path}: train.epoch: unknown key; did you mean 'epochs'?"


def test_unknown_section_suggests_the_closest(tmp_path):
    path = _write(tmp_path, "spilt:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"spilt: unknown key; did you mean 'split'\?"):
        load_config(path, env={})


@pytest.mark.parametrize("text, expected", [
    ("train:\n  lr: -1\n", "train.lr: Input should be greater than 0, got -1"),
    ("train:\n  model: resnet9\n", "train.model: Input should be 'resnet18', 'resnet34' or 'resnet50', got 'resnet9'"),
    ("split:\n  classes: one-five\n", "split.classes: classes must look like '1-5' or '0-5+', got 'one-five'"),
    ("upload:\n  s3_uri: bucket/x\n", "upload.s3_uri: must be an s3://bucket/prefix URI, got 'bucket/x'"),
    ("deploy:\n  name: -bad\n", "deploy.name: must be 1-63 letters, digits or hyphens"),
    ("train:\n  epochs: many\n", "train.epochs: Input should be a valid integer"),
])
def test_bad_values_are_explained(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value).startswith(f"{path}: {expected}")


def test_several_problems_are_all_listed(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 0\n  epochs: 0\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert sorted(exc.value.lines) == [
        f"{path}: train.epochs: Input should be greater than or equal to 1, got 0",
        f"{path}: train.lr: Input should be greater than 0, got 0",
    ]


def test_env_error_names_the_variable():
    with pytest.raises(ConfigError) as exc:
        load_config(None, env={"BINCLI_TRAIN__BATCH_SIZE": "0"})
    assert str(exc.value).startswith("env BINCLI_TRAIN__BATCH_SIZE: train.batch_size:")


def test_an_env_override_of_a_section_that_is_not_one_is_refused_with_a_suggestion(in_tmp):
    with pytest.raises(ConfigError) as exc:
        load_config(None, env={"BINCLI_TRAN__EPOCHS": "3"})
    assert str(exc.value) == "env BINCLI_TRAN__EPOCHS: 'tran' is not a config section; did you mean 'train'?"
    load_config(None, env={"BINCLI_SHARED": "/somewhere", "BINCLI_INSPECT__PER_CLASS": "4"})  # no __: not ours


def test_config_show_takes_every_section(in_tmp):
    from typer.testing import CliRunner

    from bincli.cli import app

    r = CliRunner().invoke(app, ["config", "show", "--step", "inspect"])
    assert r.exit_code == 0, r.output
    assert "inspect.per_class" in r.stdout and "train." not in r.stdout


def test_yaml_syntax_error_names_line(tmp_path):
    path = _write(tmp_path, "train:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: line \d+ not valid YAML"):
        load_config(path, env={})


def test_missing_explicit_file_and_env_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match=r"nope2\.yaml: config file not found"):
        load_config(None, env={"BINCLI_CONFIG": str(tmp_path / "nope2.yaml")})


def test_set_option_needs_key_and_value():
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        parse_set_options(["train.lr"])


def test_sagemaker_yaml_is_valid_and_selects_the_sagemaker_backend():
    from bincli.config import load_config

    loaded = load_config(ROOT / "configs" / "sagemaker.yaml")
    assert loaded.config.backend == "sagemaker" and loaded.config.upload.s3_uri.startswith("s3://")
    assert loaded.config.sagemaker.role_arn.startswith("arn:aws:iam::")


@pytest.mark.parametrize(("key", "value", "allowed"), [
    # 1.13's image has Python 3.9, older than the core's; 2.8 has a training image but no inference one.
    ("framework_version", "1.13", "2.3, 2.4, 2.5, 2.6, 2.7, 2.8, 2.9, 2.10"),
    ("inference_framework_version", "2.8", "2.3, 2.4, 2.5, 2.6"),
])
def test_a_framework_version_without_an_image_that_runs_the_core_is_refused_at_load(tmp_path, key, value, allowed):
    from bincli.pytorch_images import allowed_versions

    path = _write(tmp_path, f"sagemaker:\n  {key}: '{value}'\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    scope = "training" if key == "framework_version" else "inference"
    image_key = f"{scope}_image"
    assert str(exc.value) == (
        f"{path}: sagemaker.{key}: must be a PyTorch version with a SageMaker {scope} image with Python >= 3.11 "
        f"(the core's) in the installed SageMaker SDK: {', '.join(allowed_versions(scope))}; got '{value}'; "
        f"or set sagemaker.{image_key}")
    assert ", ".join(allowed_versions(scope)).startswith(allowed)  # (the SDK installed here, 3.27)
    # A given image is used as it is: its version is not looked up.
    loaded = load_config(_write(tmp_path, f"sagemaker:\n  {key}: '{value}'\n  {image_key}: 1.dkr.ecr/x:1\n"), env={})
    assert getattr(loaded.config.sagemaker, key) == value


def test_a_config_that_is_not_a_regular_file_says_so_without_opening_it(tmp_path):
    import os

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer came
    for path, kind in ((Path("/dev/zero"), "a device or socket"), (fifo, "a FIFO"), (tmp_path, "a directory")):
        with pytest.raises(ConfigError, match=rf"{path}: not a regular file \({kind}\)"):
            load_config(path, env={})
    big = _write(tmp_path, "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="a config file is at most"):
        load_config(big, env={})
