"""The shipped configs and the README: every config key is valid and documented, the demo config drives
every pipeline step, and every bincli command the README shows exists with the flags it shows."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import Config, flatten, load_config, parse_set_options

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
README = ROOT / "README.md"
runner = CliRunner()


def _leaves(d: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            keys += _leaves(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


@pytest.mark.parametrize("name", ["demo.yaml", "local.yaml", "sagemaker.yaml"])
def test_shipped_config_loads_and_every_key_is_a_documented_one(name):
    path = CONFIGS / name
    loaded = load_config(path, env={})  # raises ConfigError naming the key on an unknown key or bad value
    documented = set(flatten(Config()))
    for key in _leaves(yaml.safe_load(path.read_text())):
        # search_space ranges are mappings in local.yaml; `key: null` there is a leaf of its own.
        assert key in documented or any(d.startswith(key + ".") for d in documented), f"{name}: {key}"
        assert loaded.source_of(key) == str(path) or any(
            loaded.source_of(d) == str(path) for d in documented if d.startswith(key + ".")), f"{name}: {key}"


def test_every_key_in_demo_yaml_has_a_type_and_meaning_comment():
    for line in (CONFIGS / "demo.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):  # section headers
            assert "# (" in line, f"undocumented key in configs/demo.yaml: {line!r}"


def test_demo_config_is_small_and_takes_the_stand_ins_url():
    url = "http://127.0.0.1:45678"
    cfg = load_config(CONFIGS / "demo.yaml", overrides=parse_set_options([f"download.endpoint_url={url}"]),
                      env={}).config
    assert cfg.backend == "local" and cfg.download.endpoint_url == url
    assert cfg.download.per_class <= 256 and cfg.train.image_size <= 128 and cfg.train.epochs <= 5
    assert 2 <= cfg.tune.max_jobs <= 3 and cfg.tune.epochs == 1 and not cfg.train.pretrained
    assert cfg.deploy.port == 0  # a free port: the demo never collides with a server already on 8080


def test_demo_config_plans_every_pipeline_step(tmp_path):
    result = runner.invoke(app, ["pipeline", "-c", str(CONFIGS / "demo.yaml"), "-w", str(tmp_path / "w"),
                                 "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = {step["step"]: step["status"] for step in json.loads(result.stdout)["steps"]}
    assert plan == {"download": "would run", "inspect": "would run", "split": "would run",
                    "upload": "not configured", "tune": "would run", "train": "would run",
                    "deploy": "would run", "evaluate": "would run"}
    assert not (tmp_path / "w").exists()


def _readme_commands() -> list[list[str]]:
    """Each `bincli ...` command in the README, as argv after 'bincli': every line of ```bash blocks,
    `$ `-prompted lines of other blocks (the rest there is output), and inline code."""
    texts, block = [], None
    for line in (raw.strip() for raw in README.read_text().splitlines()):  # fences in lists are indented
        if line.startswith("```"):
            block = line[3:].strip() or "output" if block is None else None
        elif block == "bash" or (block is not None and line.startswith("$ ")):
            texts.append(line.split("  #")[0].removeprefix("$ "))
        elif block is None:
            texts += re.findall(r"`(bincli [^`]+)`", line)
    commands = []
    for text in texts:
        for part in re.split(r"&&|\|\||;|\|", text.replace("[", " ").replace("]", " ")):
            try:
                words = shlex.split(part.replace("\\", ""), comments=True)
            except ValueError:  # a quote that spans a '|': the words are still plain enough
                words = part.split()
            if words[:1] == ["bincli"]:
                commands.append(words[1:])
    return commands


def _help(argv: list[str]) -> str:
    result = runner.invoke(app, [*argv, "--help"], terminal_width=200)
    assert result.exit_code == 0, f"bincli {' '.join(argv)} --help: {result.output}"
    return result.output


def test_every_bincli_command_in_the_readme_exists_with_its_flags():
    commands = _readme_commands()
    assert len(commands) > 20, "the README's code blocks should show the commands"
    top = _help([])
    for argv in commands:
        words = list(argv)
        while words and words[0].startswith("-"):  # options before the command: -q, -c FILE
            option = words.pop(0)
            if option in ("-c", "--config", "-w", "--workdir"):
                words.pop(0)
            else:
                assert re.search(rf"(^|[\s,]){re.escape(option)}[\s,]", top), f"bincli {' '.join(argv)}"
        if not words or words[0].isupper():  # `bincli --help`, `bincli COMMAND --help`
            continue
        path = [words.pop(0)]
        if path[0] == "config" and words and not words[0].startswith("-"):
            path.append(words.pop(0))
        assert re.search(rf"^\s+{path[0]}\s", top, re.M), f"no command bincli {path[0]}"
        text = _help(path)
        for word in words:
            flag = word.split("=")[0]
            if re.fullmatch(r"--?[a-zA-Z][\w-]*", flag):
                assert re.search(rf"(^|[\s,/]){re.escape(flag)}([\s,=]|$)", text, re.M), \
                    f"README shows 'bincli {' '.join(argv)}', but {' '.join(path)} has no {flag}"


def test_the_demo_from_a_bare_clone_reads_the_public_bucket_and_says_so(tmp_path):
    """No ABID sample beside the project: no stand-in is started and the pipeline runs without
    download.endpoint_url (the public bucket). bincli is a recorder here: only the script's choice is tested."""
    import subprocess

    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls.txt"
    (fake / "bincli").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'if [ "$1" = pipeline ]; then mkdir -p "$5/splits"; '
        'printf "id,path,count\\n00001,images/00001.jpg,3\\n" > "$5/splits/test.csv"; fi\n')
    (fake / "bincli").chmod(0o755)
    work = tmp_path / "work"
    run = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "BIN": str(fake), "SHARED": str(tmp_path / "no-shared"),
                              "DEMO_WORK": str(work)}, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "from the public bucket s3://aft-vbi-pds itself (needs internet; no AWS account)" in run.stdout
    assert "local stand-in" not in run.stdout
    recorded = calls.read_text().splitlines()
    assert recorded[0] == f"pipeline -c configs/demo.yaml -w {work}"  # no download.endpoint_url
    assert [line.split()[0] for line in recorded] == ["pipeline", "predict", "teardown", "status", "teardown"]
