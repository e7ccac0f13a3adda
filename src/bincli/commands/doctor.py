"""`bincli doctor`: is this machine / AWS account ready for the pipeline? One row per check, and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import out


def doctor(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    write_policies: Annotated[Path | None, typer.Option(
        "--write-policies", metavar="DIR", file_okay=False, show_default=False,
        help="Write the IAM policies this config needs (yours, the execution role's and its trust policy) "
             "into DIR instead of checking. Backend sagemaker.")] = None,
) -> None:
    """Check what the pipeline needs, one row each: ok, warn, fail or not checked, with the fix.

    Backend sagemaker: credentials, region (config, env, buckets), the images, the execution role
    (it exists, trusts SageMaker, and may do what the jobs do: simulated), your own rights, the
    instance types and Service Quotas for train, tune and deploy, and what each may cost. train,
    tune, deploy and pipeline run the same checks before they create anything (--skip-preflight).
    Backend local: free disk, the deploy port, cores and GPUs, chromium. Exits 1 when a check fails.

    Example: bincli -c configs/sagemaker.yaml doctor;  bincli doctor --write-policies policies/mine
    """
    cfg = load(config, workdir, sets).config
    from bincli.steps import preflight

    if write_policies is not None:
        finish(preflight.write_policies(cfg, write_policies), json_out,
               lambda r: out.print("\n".join(r["policies"]), markup=False, soft_wrap=True))
        return
    result = preflight.run_doctor(cfg)
    finish(result, json_out, _render)
    if not result["ok"]:
        raise typer.Exit(1)


def _render(result: dict[str, Any]) -> None:
    rows = result["checks"]
    width = max((len(r["name"]) for r in rows), default=0)
    for row in rows:
        status = "cost" if row["cost"] else row["status"]
        out.print(f"{status:<11} {row['name']:<{width}}  {row['detail']}", markup=False, soft_wrap=True)
        if row["fix"] and (row["status"] != "ok" or row["cost"]):
            out.print(f"{'':<11} {'':<{width}}  fix: {row['fix']}", markup=False, soft_wrap=True)
    failed = sum(r["status"] == "fail" for r in rows)
    out.print(f"backend {result['backend']}: " + (f"{failed} check(s) failed" if failed else "ready"), markup=False)
