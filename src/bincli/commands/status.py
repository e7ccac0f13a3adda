"""`bincli status`: what each step of the pipeline has produced in this workspace."""

from __future__ import annotations

from typing import Any

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import out
from bincli.errors import BincliError
from bincli.state import STEP_ORDER, State

# The outputs worth a glance in the table, per step (the JSON has them all).
_KEY_OUTPUTS = {
    "download": ("images", "failed", "data_dir"),
    "split": ("train", "valid", "test", "manifests_dir"),
    "upload": ("uri",),
    "tune": ("trials", "best_trial", "best_value"),
    "train": ("model", "accuracy"),
    "deploy": ("name", "url"),
    "evaluate": ("split", "accuracy", "rmse"),
}


def _short(value) -> str:
    """Floats to 4 significant digits so the table stays readable; --json keeps full precision."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def status(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False,
           sets: SetOpt = None) -> None:
    """Show which steps are done in the workspace, when, and their key outputs.

    Example: bincli status --json
    """
    cfg = load(config, workdir, sets).config
    steps = State(cfg.workdir).read()["steps"]
    rows = []
    for name in STEP_ORDER:
        record = steps.get(name)
        rows.append({
            "step": name,
            "done": record is not None,
            "finished_at": record["finished_at"] if record else None,
            "outputs": record["outputs"] if record else {},
        })
    deploy_row = next(r for r in rows if r["step"] == "deploy")
    if deploy_row["done"]:
        deploy_row["endpoint"] = _endpoint(cfg)
    result = {"workdir": str(cfg.workdir), "steps": rows}

    def render(_):
        from rich.table import Table

        table = Table(title=f"bincli workspace {cfg.workdir}")
        for col in ("step", "status", "when", "outputs"):
            table.add_column(col)
        for row in rows:
            shown = {k: row["outputs"][k] for k in _KEY_OUTPUTS.get(row["step"], ()) if k in row["outputs"]}
            shown.update(_endpoint_cells(row.get("endpoint")))
            table.add_row(row["step"], "done" if row["done"] else "not run", row["finished_at"] or "",
                          ", ".join(f"{k}={_short(v)}" for k, v in shown.items()))
        out.print(table)

    finish(result, json_out, render)


def _endpoint(cfg) -> dict[str, Any] | None:
    """The deployed endpoint as its backend sees it now (SageMaker: DescribeEndpoint); an error
    reaching it is shown in its row, not raised: status must always answer."""
    from bincli.backends import get_backend

    try:
        return get_backend(cfg).endpoint_status()
    except BincliError as exc:
        return {"error": str(exc)}


def _endpoint_cells(endpoint: dict[str, Any] | None) -> dict[str, Any]:
    if not endpoint:
        return {}
    if "error" in endpoint:
        return {"endpoint": endpoint["error"]}
    cells = {"endpoint": endpoint["status"]}
    if endpoint.get("serverless"):
        cells["serverless_mb"] = endpoint["serverless"].get("MemorySizeInMB")
    elif endpoint.get("instances") is not None or endpoint.get("desired_instances") is not None:
        cells["instances"] = f"{endpoint.get('instances')} (desired {endpoint.get('desired_instances')})"
    if endpoint.get("failure_reason"):
        cells["failure"] = endpoint["failure_reason"]
    return cells
