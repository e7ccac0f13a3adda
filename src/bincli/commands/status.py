"""`bincli status`: where the workspace stands, step by step, and the command to run next."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, config_path, finish, load
from bincli.console import out

# The outputs worth a glance in the table, per step (the JSON has them all).
_KEY_OUTPUTS = {
    "download": ("images", "failed", "data_dir"),
    "split": ("train", "valid", "test", "manifests_dir"),
    "upload": ("uri",),
    "tune": ("tuning_job", "trials", "best_trial", "best_value"),
    "train": ("model", "accuracy"),
    "deploy": ("name", "url"),
    "evaluate": ("split", "accuracy", "rmse"),
}


def status(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False,
           sets: SetOpt = None) -> None:
    """Show each step's status (done, stale, running, not run), its key outputs, whether the
    endpoint answers, and the command to run next.

    Stale: made from an earlier result that changed since (a new split leaves train stale).
    "config differs": the config now has other settings than the step ran with ('bincli pipeline'
    would redo it). The table shows paths relative to the workspace; --json keeps them absolute.

    Example: bincli status --json
    """
    loaded = load(config, workdir, sets)
    from bincli.steps.status import shell_path, workspace_status

    # The next command must act on this same workspace: repeat the -c / -w that chose it.
    flags = ""
    if config_path(config) is not None:
        flags += f" -c {shell_path(config_path(config))}"
    if loaded.source_of("workdir").startswith("flag"):
        flags += f" -w {shell_path(loaded.config.workdir)}"
    finish(workspace_status(loaded.config, flags), json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from rich import box
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    from bincli.steps.status import shell_path

    root = Path(result["workdir"])
    table = Table(title=f"bincli workspace {shell_path(root)}", box=box.SIMPLE_HEAD, show_edge=False,
                  title_justify="left")
    table.add_column("step", no_wrap=True)
    table.add_column("status", max_width=18)
    table.add_column("when", no_wrap=True)
    table.add_column("outputs", overflow="fold")
    notes = []
    for row in result["steps"]:
        shown = {k: row["outputs"][k] for k in _KEY_OUTPUTS.get(row["step"], ()) if k in row["outputs"]}
        cells, alive = _endpoint_cells(row.get("endpoint"))
        shown.update(cells)
        table.add_row(row["step"], _status_cell(row, alive), _when(row["finished_at"]),
                      ", ".join(f"{k}={_short(v, root)}" for k, v in shown.items()))
        if row["config_differs"]:
            notes.append(f"{row['step']}: config differs since it ran: "
                         f"{', '.join(d.replace(':', '', 1) for d in row['config_differs'])} "
                         f"('bincli pipeline' would redo it)")
    out.print(table)
    for note in notes:
        out.print(note, markup=False)  # wrapped at the terminal's width, like the table
    # The command on one line whatever its length, so it copies whole.
    out.print(f"next: {result['next']['command']}", markup=False, soft_wrap=True)
    out.print(Padding(Text(result["next"]["why"]), (0, 0, 0, len("next: "))))


def _status_cell(row: dict[str, Any], alive: str | None) -> str:
    """"stale (split changed)", "done, alive", "done (config differs)": the parenthesis on a line of its own."""
    cell = f"{row['status']}, {alive}" if alive else row["status"]
    if row["status"] == "stale":
        cell += f"\n({'; '.join(_brief(r) for r in row['reasons'])})"  # the why on a line of its own
    elif row["config_differs"] and row["status"] == "done":
        cell += "\n(config differs)"
    return cell


def _brief(reason: str) -> str:
    """freshness's "split changed since (ran 2026-...)" as "split changed" (the when column has the time)."""
    return re.sub(r" since( \(ran [^)]*\))?$", "", reason)


def _when(finished_at: str | None) -> str:
    """'2026-12-01T10:05:30+00:00' as '12-01 10:05' (UTC, as recorded); the JSON keeps it whole."""
    return f"{finished_at[5:10]} {finished_at[11:16]}" if finished_at else ""


def _short(value: Any, root: Path) -> str:
    """Floats to 4 significant digits, paths in the workspace relative to it (the table fits 80
    columns); --json keeps both whole."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and value.startswith("/"):
        try:
            return str(Path(value).relative_to(root))
        except ValueError:
            return value
    return str(value)


def _endpoint_cells(endpoint: dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """The endpoint's extra output cells, and "alive" / "not answering" for the status cell
    (None when the backend does not say: a SageMaker endpoint shows its own status instead)."""
    if not endpoint:
        return {}, None
    if "error" in endpoint:
        return {"endpoint": endpoint["error"]}, None
    alive = endpoint.get("alive")
    cells: dict[str, Any] = {}
    if alive is None:
        cells["endpoint"] = endpoint["status"]
    if endpoint.get("serverless"):
        cells["serverless_mb"] = endpoint["serverless"].get("MemorySizeInMB")
    elif endpoint.get("instances") != endpoint.get("desired_instances") or (
            alive is None and endpoint.get("instances") is not None):  # a local one: only when some are down
        cells["instances"] = f"{endpoint.get('instances')} (desired {endpoint.get('desired_instances')})"
    if endpoint.get("failure_reason"):
        cells["failure"] = endpoint["failure_reason"]
    cost = endpoint.get("cost_so_far")
    if cost:  # what a real-time SageMaker endpoint has run so far, while it bills
        usd = f", ${cost['usd']:.2f} at ${cost['usd_per_hour']}/h" if cost.get("usd") is not None else ""
        cells["billed_so_far"] = f"{cost['instance_hours']} instance-hours of {cost['instance_type']}{usd}"
    return cells, None if alive is None else ("alive" if alive else "not answering")
