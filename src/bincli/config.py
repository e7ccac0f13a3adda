"""The config: one pydantic model per step, loaded from YAML, with env and flag overrides.

Precedence, lowest to highest (written once, here): defaults < YAML file < env < flags.
  - YAML: `configs/local.yaml` by default, or `$BINCLI_CONFIG`, or `-c FILE`.
  - env:  `BINCLI_<SECTION>__<KEY>=value` (e.g. `BINCLI_SPLIT__SEED=7`), `BINCLI_WORKDIR=...`;
          values are parsed as YAML scalars, never eval'd.
  - flags: each command's own flags, and `--set section.key=value`.

Every error names where the bad value came from (file, env var or flag), the dotted key, and
what is expected, e.g. `configs/x.yaml: split.ratios: must sum to 1.0, got 1.1`.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from bincli.core.classes import ClassSpec
from bincli.core.hyperparams import CONFIG_PARAMS, FREEZE_CHOICES, MODEL_CHOICES, OPTIMIZER_CHOICES, Param
from bincli.data import abid
from bincli.errors import ConfigError

DEFAULT_CONFIG = Path("configs/local.yaml")
ENV_CONFIG = "BINCLI_CONFIG"
ENV_PREFIX = "BINCLI_"
_ENV_NOT_OVERRIDES = {"BINCLI_CONFIG", "BINCLI_DEBUG"}


# ---------------------------------------------------------------- value types
def _check_classes(value: str) -> str:
    return str(ClassSpec.parse(value))


def _check_s3_uri(value: str) -> str:
    if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", value):
        raise ValueError(f"must be an s3://bucket/prefix URI, got {value!r}")
    return value.rstrip("/")


def _check_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"must be an http(s):// URL, got {value!r}")
    return value.rstrip("/")


def _check_name(value: str) -> str:
    # SageMaker's endpoint/model name rule, so a local name also works on SageMaker.
    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", value):
        raise ValueError(f"must be 1-63 letters, digits or hyphens, not starting with a hyphen, got {value!r}")
    return value


Classes = Annotated[str, AfterValidator(_check_classes)]
S3Uri = Annotated[str, AfterValidator(_check_s3_uri)]
Url = Annotated[str, AfterValidator(_check_url)]
ResourceName = Annotated[str, AfterValidator(_check_name)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- sections
def _check_ids(value: Any) -> Any:
    # ABID ids are strings: YAML reads `- 00002` as the int 2 and loses the key, so say how to fix it.
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, str):
            raise ValueError(f"ids are strings, got {item!r}; quote each one, e.g. ['00002', '100313']")
    return value


class DownloadConfig(Section):
    bucket: str = abid.BUCKET
    endpoint_url: Url | None = None
    file_list: Path | None = None
    ids_file: Path | None = None
    ids: Annotated[list[str] | None, BeforeValidator(_check_ids)] = None
    per_class: int | None = Field(None, gt=0)
    classes: Classes = "1-5"
    seed: int = 0
    workers: int = Field(32, ge=1, le=512)
    retries: int = Field(5, ge=0, le=20)
    max_object_mb: int = Field(32, ge=1, le=4096)
    strict: bool = False

    @property
    def selects_photos(self) -> bool:
        """Whether the section says what to download (per_class, file_list, ids_file or ids)."""
        return any(v is not None for v in (self.per_class, self.file_list, self.ids_file)) or bool(self.ids)


class SplitConfig(Section):
    input: Path | None = None
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 42
    classes: Classes = "1-5"
    max_per_class: int | None = Field(None, gt=0)
    layout: Literal["manifest", "folders"] = "manifest"
    group_near_duplicates: bool = True  # keep near-copies in one split (data/near_duplicates.py)

    @field_validator("ratios", mode="before")
    @classmethod
    def _three_ratios(cls, ratios: Any) -> Any:
        # pydantic's own message for a 2-item list is "Field required" (for the missing third item)
        if isinstance(ratios, list | tuple) and len(ratios) != 3:
            raise ValueError(f"expected 3 numbers (train, valid, test), got {list(ratios)}")
        return ratios

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, ratios: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 or r >= 1 for r in ratios):
            raise ValueError(f"each ratio must be in [0, 1), got {list(ratios)}")
        if ratios[0] <= 0:
            raise ValueError(f"the train ratio must be above 0, got {ratios[0]}")
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"must sum to 1.0, got {round(sum(ratios), 6)}")
        return ratios


class InspectConfig(Section):
    input: Path | None = None
    per_class: int = Field(8, ge=1, le=100)
    top_losses: int = Field(24, ge=1, le=1000)


class UploadConfig(Section):
    s3_uri: S3Uri | None = None
    layout: Literal["manifest", "folders"] = "manifest"
    endpoint_url: Url | None = None
    workers: int = Field(16, ge=1, le=256)


def _train_field(p: Param) -> tuple[Any, Any]:
    annotation: Any = Literal[p.choices] if p.choices else p.type
    if p.optional:
        annotation = annotation | None
    return annotation, Field(p.default, description=p.describe(), **p.bounds)


# The train section's fields come from the one declaration of the hyperparameters (core/hyperparams.py).
TrainConfig = create_model(
    "TrainConfig", __base__=Section, __module__=__name__,
    __doc__="The train section: every training hyperparameter and launch key of core/hyperparams.py.",
    **{p.name: _train_field(p) for p in CONFIG_PARAMS},
)


class FloatRange(Section):
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = False

    @field_validator("high")
    @classmethod
    def _high_above_low(cls, high: float, info) -> float:
        low = info.data.get("low")
        if low is not None and high <= low:
            raise ValueError(f"high must be above low ({low}), got {high}")
        return high


class SearchSpace(Section):
    """What the tuner varies; null = not searched (the train section's value is used).
    A training flag given to `bincli tune` fixes that hyperparameter for every trial."""

    lr: FloatRange | None = FloatRange(low=1e-4, high=1e-2, log=True)
    weight_decay: FloatRange | None = FloatRange(low=1e-6, high=1e-2, log=True)
    batch_size: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(default_factory=lambda: [16, 32, 64])
    label_smoothing: FloatRange | None = None
    optimizer: list[Literal[OPTIMIZER_CHOICES]] | None = None  # type: ignore[valid-type]
    freeze: list[Literal[FREEZE_CHOICES]] | None = None  # type: ignore[valid-type]

    def searched(self, fixed: set[str]) -> dict[str, Any]:
        """The searched hyperparameters (train config names) and their ranges or choices, less
        those fixed by flags: what both backends' tuners search."""
        return {name: value for name, value in self.model_dump().items() if value is not None and name not in fixed}


class TuneConfig(Section):
    max_jobs: int = Field(8, ge=0, le=500)  # 0: no tuning (`bincli pipeline` shows tune as not configured)
    max_parallel: int = Field(1, ge=1, le=100)
    epochs: int = Field(3, ge=1, le=1000)
    objective: Literal["valid_loss", "valid_acc"] = "valid_loss"
    # bayesian: Optuna TPE / SageMaker Bayesian; random; hyperband: stops weak trials early by epochs.
    strategy: Literal["bayesian", "random", "hyperband"] = "bayesian"
    seed: int = 0
    search_space: SearchSpace = SearchSpace()


class AutoscalingConfig(Section):
    """Application Auto Scaling of a SageMaker endpoint's variant (target tracking on invocations)."""

    min_instances: int = Field(1, ge=1, le=100)
    max_instances: int = Field(4, ge=1, le=100)
    # Per instance per MINUTE (SageMakerVariantInvocationsPerInstance). 400 = 13 req/s measured with one
    # worker (75 ms, SAGEMAKER-SERVING.md) x 60 x 0.5 safety, AWS's guidance.
    target_invocations_per_instance: float = Field(400.0, gt=0)
    scale_in_cooldown_s: int = Field(300, ge=0, le=86400)
    scale_out_cooldown_s: int = Field(60, ge=0, le=86400)

    @model_validator(mode="after")
    def _max_covers_min(self) -> AutoscalingConfig:
        if self.max_instances < self.min_instances:
            raise ValueError(f"max_instances ({self.max_instances}) must be >= min_instances "
                             f"({self.min_instances})")
        return self


def _check_memory(value: int) -> int:
    if value not in range(1024, 6145, 1024):
        raise ValueError(f"must be 1024, 2048, 3072, 4096, 5120 or 6144 (MB), got {value!r}")
    return value


class ServerlessConfig(Section):
    """A SageMaker serverless endpoint: CPU only, 4 MB payloads, 60 s per invocation."""

    memory_mb: Annotated[int, AfterValidator(_check_memory)] = 2048
    max_concurrency: int = Field(5, ge=1, le=200)
    provisioned_concurrency: int | None = Field(None, ge=1, le=200)

    @model_validator(mode="after")
    def _provisioned_within_max(self) -> ServerlessConfig:
        if self.provisioned_concurrency is not None and self.provisioned_concurrency > self.max_concurrency:
            raise ValueError(f"provisioned_concurrency ({self.provisioned_concurrency}) must be <= "
                             f"max_concurrency ({self.max_concurrency})")
        return self


class DeployConfig(Section):
    name: ResourceName = "bincli-local"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    model: Path | None = None
    threads: int = Field(4, ge=1, le=64)
    instances: int = Field(1, ge=1, le=16)  # local server processes on one port (SO_REUSEPORT)
    startup_timeout: float = Field(120.0, gt=0)
    # Against clients that hold connections without using them (the local endpoint's server).
    body_timeout: float = Field(30.0, gt=0, le=3600)
    keep_alive_timeout: float = Field(5.0, gt=0, le=3600)
    max_connections: int = Field(64, ge=1, le=10_000)
    # Micro-batching in the local server: concurrent requests' images run as one forward, one forward at a
    # time (1 = off). A lone request waits for nobody (batching.py), so one client is as fast as with it off;
    # 8 clients got more req/s than with concurrent forwards fighting over the cores (bench/serve.py, issue 14).
    max_batch_size: int = Field(8, ge=1, le=64)
    max_batch_delay_ms: float = Field(0.0, ge=0, le=1000)
    # SageMaker endpoints (backend sagemaker; the local backend refuses them through its capability table).
    autoscaling: AutoscalingConfig | None = None
    serverless: ServerlessConfig | None = None
    model_server_workers: int | None = Field(None, ge=1, le=64)

    @model_validator(mode="after")
    def _serverless_or_autoscaling(self) -> DeployConfig:
        if self.serverless is not None and self.autoscaling is not None:
            raise ValueError("serverless and autoscaling exclude each other (a serverless endpoint scales "
                             "by max_concurrency); set one of them to null")
        return self


class PredictConfig(Section):
    endpoint: ResourceName | None = None
    endpoint_url: Url | None = None
    timeout: float = Field(30.0, gt=0)
    concurrency: int = Field(8, ge=1, le=256)
    # Count-aware answers and order checks (core/counting.py holds the same defaults; a test checks).
    count_range_level: float = Field(0.8, gt=0, le=1)
    match_threshold: float = Field(0.8, gt=0, le=1)
    mismatch_threshold: float = Field(0.1, ge=0, lt=1)
    review_exit_code: int = Field(0, ge=0, le=255)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> PredictConfig:
        if self.mismatch_threshold >= self.match_threshold:
            raise ValueError(f"mismatch_threshold ({self.mismatch_threshold}) must be below match_threshold "
                             f"({self.match_threshold})")
        return self


def _check_instance_type(value: str) -> str:
    if not re.fullmatch(r"ml\.[a-z0-9-]+\.[a-z0-9-]+", value):
        raise ValueError(f"must be a SageMaker instance type such as ml.g4dn.xlarge, got {value!r}")
    return value


InstanceType = Annotated[str, AfterValidator(_check_instance_type)]


class SageMakerConfig(Section):
    region: str | None = None
    role_arn: str | None = None
    bucket: str | None = None
    train_instance_type: str = "ml.g4dn.xlarge"
    train_instance_count: int = Field(1, ge=1, le=100)
    training_image: str | None = None
    # File: each channel is copied to every instance before training starts; FastFile: read from S3 as
    # the script opens each file (no wait, no disk for it; each photo's first read is an S3 request).
    input_mode: Literal["File", "FastFile"] = "File"
    framework_version: str = "2.8"
    volume_size_gb: int = Field(50, ge=1, le=16384)
    spot: bool = True
    max_run_minutes: int = Field(120, ge=1, le=28 * 24 * 60)
    max_wait_minutes: int = Field(240, ge=1, le=28 * 24 * 60)
    base_job_name: str = Field("bincli", pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,38}$")
    poll_seconds: float = Field(30.0, gt=0, le=600)
    deploy_instance_type: str = "ml.m5.large"
    deploy_instance_count: int = Field(1, ge=1, le=100)
    inference_image: str | None = None
    inference_framework_version: str = "2.6"
    deploy_timeout_minutes: int = Field(30, ge=1, le=24 * 60)
    delete_timeout_minutes: float = Field(15, gt=0, le=24 * 60)
    # USD per instance-hour by instance type, replacing backends/sagemaker/pricing.py's dated table.
    prices: dict[InstanceType, Annotated[float, Field(ge=0)]] | None = None
    # train, tune, deploy and pipeline check credentials, role, rights, quotas and images first (bincli doctor).
    preflight: bool = True

    @model_validator(mode="after")
    def _spot_wait_covers_run(self) -> SageMakerConfig:
        if self.spot and self.max_wait_minutes < self.max_run_minutes:
            raise ValueError(f"max_wait_minutes ({self.max_wait_minutes}) must be >= max_run_minutes "
                             f"({self.max_run_minutes}) with spot: true")
        return self

    @field_validator("framework_version", "inference_framework_version")
    @classmethod
    def _an_image_runs_the_core(cls, version: str, info) -> str:
        # Found at load, not when the SDK cannot resolve it (deploy's traceback) or when the job has
        # billed and the core fails to import on an older Python. A given image is used as it is.
        from bincli.pytorch_images import image_versions, py_version

        scope, image_key = (("training", "training_image") if info.field_name == "framework_version"
                            else ("inference", "inference_image"))
        if info.data.get(image_key) is None and image_versions(scope) is not None:  # None: no SDK, no table
            try:
                py_version(version, scope)
            except ValueError as exc:
                raise ValueError(f"{exc}; or set sagemaker.{image_key}") from None
        return version


class Config(Section):
    workdir: Path = Path("bincli-work")
    backend: Literal["local", "sagemaker"] = "local"
    download: DownloadConfig = DownloadConfig()
    split: SplitConfig = SplitConfig()
    inspect: InspectConfig = InspectConfig()
    upload: UploadConfig = UploadConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    deploy: DeployConfig = DeployConfig()
    predict: PredictConfig = PredictConfig()
    sagemaker: SageMakerConfig = SageMakerConfig()

    @model_validator(mode="after")
    def _default_endpoint_name(self) -> Config:
        # An unset deploy.name takes its backend's default (data, like the field defaults): a SageMaker
        # endpoint name is shared by the whole account and region, so it ends with this workspace's id.
        if "name" not in self.deploy.model_fields_set:
            default = _DEFAULT_ENDPOINT_NAME[self.backend](self.workdir)
            if default != self.deploy.name:
                self.deploy.name = default
        return self


def _workspace_endpoint_name(workdir: Path) -> str:
    from bincli.workspace import workspace_id

    return f"bincli-{workspace_id(workdir)}"


_DEFAULT_ENDPOINT_NAME = {"local": lambda workdir: DeployConfig.model_fields["name"].default,
                          "sagemaker": _workspace_endpoint_name}


# The config's sections (`config show --step`, env overrides BINCLI_<SECTION>__<KEY>).
STEPS = ("download", "inspect", "split", "upload", "train", "tune", "deploy", "predict", "sagemaker")


# ---------------------------------------------------------------- loading
class LoadedConfig:
    """The resolved config plus where each key's value came from (for `config show`)."""

    def __init__(self, config: Config, path: Path | None, sources: dict[str, str]):
        self.config = config
        self.path = path
        self.sources = sources

    def source_of(self, dotted: str) -> str:
        return self.sources.get(dotted, "default")


def resolve_config_path(cli_path: Path | None, env: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """Which YAML to read: -c FILE, else $BINCLI_CONFIG, else configs/local.yaml if present.

    Returns (path, explicit); a missing explicit file is an error, a missing default is not
    (the built-in defaults are the same as configs/local.yaml).
    """
    env = os.environ if env is None else env
    if cli_path is not None:
        return cli_path, True
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]), True
    return (DEFAULT_CONFIG, False) if DEFAULT_CONFIG.is_file() else (None, False)


def load_config(
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Load and validate. `overrides` maps dotted keys to flag values; None values are ignored."""
    env = os.environ if env is None else env
    cfg_path, _ = resolve_config_path(path, env)
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if cfg_path is not None:
        raw = _read_yaml(cfg_path)
        for key in _leaf_keys(raw):
            sources[key] = str(cfg_path)
    layered = [(key, value, f"env {var}") for key, (value, var) in _env_overrides(env).items()]
    for key, value in (overrides or {}).items():
        if value is not None:
            flag = f"flag {value.flag}" if isinstance(value, FlagValue) else "flag"
            layered.append((key, value.flag_value if isinstance(value, FlagValue) else value, flag))
    # A bad key or value from env/flags is blamed on its variable or flag, before anything merges.
    problems = [f"{source.removeprefix('flag ')}: {_show_key(key)}: {why}" for key, value, source in layered
                if (why := _check_key(key) or _check_tree(value))]
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else f"{len(problems)} problems in the config", problems)
    for key, value, source in layered:
        _set_dotted(raw, key, value)
        # What was below this key (from the file, say) is replaced: errors there are this source's.
        for below in [k for k in sources if k.startswith(key + ".")]:
            del sources[below]
        sources[key] = source
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(err, sources, cfg_path) for err in exc.errors()]
        raise ConfigError(lines[0] if len(lines) == 1 else f"{len(lines)} problems in the config", lines) from None
    return LoadedConfig(config, cfg_path, sources)


class FlagValue:
    """A flag's value tagged with the flag's name, so errors can say `--ratios: ...`."""

    def __init__(self, flag: str, flag_value: Any):
        self.flag = flag
        self.flag_value = flag_value


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """`--set train.lr=0.01` -> {"train.lr": 0.01}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=0.01")
        out[key.strip()] = FlagValue("--set", _yaml_scalar(value.strip()))
    return out


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; more is a mistake (or a hostile file)


def _read_yaml(path: Path) -> dict[str, Any]:
    import stat

    try:
        mode = path.stat().st_mode  # checked without opening: a FIFO would block, /dev/zero never end
    except OSError:
        raise ConfigError(f"{path}: config file not found", hint="pass -c FILE or set BINCLI_CONFIG") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise ConfigError(f"{path}: not a regular file ({kind}); expected a YAML config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a config file is at most {MAX_CONFIG_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line} not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:  # a control character; PyYAML's message spans lines
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(f"{path}: line {line} not valid YAML: character {_char(exc.character)!r} is not "
                          "allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (download:, split:, ...), got {type(data).__name__}")
    problem = _check_tree(data)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return data


def _show_key(dotted: str) -> str:
    """A key as the error shows it: quoted if it holds a newline or another unprintable character."""
    return dotted if dotted.isprintable() else repr(dotted)


def _char(character: Any) -> str:
    return chr(character) if isinstance(character, int) else str(character)


_MAX_DEPTH = 20
_MAX_NODES = 100_000


def _check_tree(value: Any) -> str | None:
    """Why a parsed YAML value cannot be a config (keys that are not names, an alias that contains
    itself, aliases that expand to millions of values), or None. Later code walks the tree."""
    budget = [_MAX_NODES]

    def walk(node: Any, where: str, depth: int, path: frozenset[int]) -> str | None:
        budget[0] -= 1
        if budget[0] < 0:
            return f"too large (over {_MAX_NODES} values once aliases are expanded)"
        if not isinstance(node, dict | list):
            return None
        if id(node) in path:
            return f"{where or 'the document'}: an alias refers to itself"
        if depth > _MAX_DEPTH:
            return f"{where}: nested too deeply (more than {_MAX_DEPTH} levels)"
        path = path | {id(node)}
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(node, dict) and not isinstance(key, str):
                return (f"{where + '.' if where else ''}{key!r}: keys must be names, got "
                        f"{type(key).__name__} {key!r}; quote it")
            child_where = f"{where}.{_show_key(key)}" if where and isinstance(node, dict) else (
                where or _show_key(str(key)))
            if (why := walk(child, child_where, depth + 1, path)) is not None:
                return why
        return None

    return walk(value, "", 0, frozenset())


def _env_overrides(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    out = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in _ENV_NOT_OVERRIDES:
            continue
        key = ".".join(part.lower() for part in var[len(ENV_PREFIX):].split("__"))
        top = key.split(".")[0]
        if top in Config.model_fields:
            out[key] = (_yaml_scalar(value), var)
        elif "." in key:  # BINCLI_<SECTION>__<KEY> with a section that is not one: a typo, not another tool's
            raise ConfigError(f"env {var}: '{top}' is not a config section{_suggest(top, list(STEPS))}")
    return out  # other BINCLI_* variables (no __) are not overrides: left alone


def _yaml_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else text
    except (yaml.YAMLError, RecursionError):
        return text


def _check_key(dotted: str) -> str | None:
    """Why an env/flag key is not a config key (the error then names that flag), or None."""
    parts = dotted.split(".")
    if not all(parts):
        return "expected section.key, e.g. train.lr"
    model: type[BaseModel] | None = Config
    for i, part in enumerate(parts):
        if model is None:
            return f"{'.'.join(parts[:i])} takes a value, not keys below it"
        fields = list(model.model_fields)
        if part not in fields:
            what = "unknown key" if i == len(parts) - 1 else f"unknown section {part!r}"
            return what + _suggest(part, fields)
        model = _submodel(model.model_fields[part].annotation)
    return None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds (FloatRange for `FloatRange | None`), or None for a value."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _leaf_keys(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys.extend(_leaf_keys(value, dotted + "."))
        else:
            keys.append(dotted)
    return keys


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at loc[:-1], for did-you-mean suggestions."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is None:
            return None
        model = _submodel(field.annotation)
    return model


def _suggest(name: str, valid: list[str]) -> str:
    """"; did you mean 'lr'?", else the valid keys: the tail of every unknown-key message."""
    close = difflib.get_close_matches(name, valid, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"


def _format_error(err: Mapping[str, Any], sources: dict[str, str], cfg_path: Path | None) -> str:
    loc = tuple(err["loc"])
    # Errors on an element of a list/tuple (ratios.1) belong to the field (ratios).
    field_loc = tuple(p for p in loc if isinstance(p, str))
    dotted = ".".join(field_loc)
    source = sources.get(dotted) or _nearest_source(dotted, sources) or (str(cfg_path) if cfg_path else "defaults")
    if source.startswith("flag "):
        source = source[5:]
    # "... or instance of TrainConfig": the class name means nothing to a user.
    msg = err["msg"].removeprefix("Value error, ").split(" or instance of ")[0]
    if err["type"] == "extra_forbidden":
        owner = _model_at(field_loc)
        msg = "unknown key" + _suggest(field_loc[-1] if field_loc else "", list(owner.model_fields) if owner else [])
    elif dotted == "train.model" and _looks_like_a_file(err.get("input")):
        # A trained model.tar.gz cannot seed training: say what can.
        msg = (f"is the architecture ({', '.join(MODEL_CHOICES)}), not a model file, got {err['input']!r}; "
               "to start from ImageNet weights use --pretrained (--weights-file FILE.pth: a local copy), "
               "to continue a run use --resume RUN")
    elif err["type"] in {"literal_error", "greater_than", "greater_than_equal", "less_than", "less_than_equal",
                         "int_parsing", "float_parsing", "bool_parsing", "int_from_float"}:
        msg = f"{msg}, got {err.get('input')!r}"
    return f"{source}: {_show_key(dotted)}: {msg}"


def _looks_like_a_file(value: Any) -> bool:
    """`--model wd/model/model.tar.gz`: a path where an architecture name belongs."""
    if not isinstance(value, str | Path):
        return False
    text = str(value)
    return ("/" in text or os.sep in text or text.endswith((".tar.gz", ".tgz", ".pt", ".pth", ".onnx"))
            or Path(text).exists())


def _nearest_source(dotted: str, sources: dict[str, str]) -> str | None:
    # A nested key's error (train.lr) may come from a parent set as a whole (train: {...}).
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:i]) in sources:
            return sources[".".join(parts[:i])]
    children = [s for k, s in sources.items() if k.startswith(dotted + ".")]
    return children[0] if children else None


def flatten(config: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Leaf values of a config by dotted key (for `config show` and state snapshots)."""
    out: dict[str, Any] = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            out.update(flatten(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out
