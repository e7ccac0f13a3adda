"""What SageMaker instances cost: one price lookup for the cost lines before and after a billed step.

The table is SageMaker's published on-demand list price (USD per instance-hour, us-east-1) as bincli
recorded it; it is not fetched, so it ages: `sagemaker.prices` in the config replaces any entry (and
is the only source for other regions). For these types the training and real-time hosting prices
are the same. Spot training is not a separate price: SageMaker's BillableTimeInSeconds is already
the spot-discounted time, so its cost is billable seconds x count x this price.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRICES_AS_OF = "2025"  # when this table was written down: check https://aws.amazon.com/sagemaker/pricing/
PRICES_REGION = "us-east-1"
ON_DEMAND_USD_PER_HOUR = {
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.g4dn.xlarge": 0.736,
    "ml.p3.2xlarge": 3.825,
}


def hourly_price(instance_type: str, region: str | None, cfg: Any) -> float | None:
    """USD per hour of one `instance_type` in `region`: the config's `sagemaker.prices` first, else
    the table (us-east-1 only), else None (unknown: say so rather than guess)."""
    override = (getattr(cfg, "prices", None) or {}).get(instance_type)
    if override is not None:
        return float(override)
    return ON_DEMAND_USD_PER_HOUR.get(instance_type) if region == PRICES_REGION else None


def job_cost(billable_seconds: float | None, instance_count: int, price: float | None) -> float | None:
    """A training job's cost in USD: SageMaker bills BillableTimeInSeconds per instance."""
    if billable_seconds is None or price is None:
        return None
    return round(billable_seconds * instance_count * price / 3600, 4)


def price_source(instance_type: str, region: str | None, cfg: Any) -> str:
    """Where hourly_price's figure comes from, for the cost line."""
    if (getattr(cfg, "prices", None) or {}).get(instance_type) is not None:
        return "sagemaker.prices"
    return f"on-demand list price, {PRICES_REGION}, {PRICES_AS_OF}; sagemaker.prices overrides"


def training_cost(job: Mapping[str, Any], region: str | None, cfg: Any) -> dict[str, Any]:
    """A training job's bill from its DescribeTrainingJob reply: billable seconds (spot savings are
    already in them), instances, the price per hour and the cost in USD (None where unknown)."""
    resources = job.get("ResourceConfig") or {}
    instance_type, count = resources.get("InstanceType", ""), int(resources.get("InstanceCount") or 1)
    price = hourly_price(instance_type, region, cfg)
    billable = job.get("BillableTimeInSeconds")
    return {"billable_seconds": billable, "training_seconds": job.get("TrainingTimeInSeconds"),
            "instance_type": instance_type, "instance_count": count, "usd_per_hour": price,
            "usd": job_cost(billable, count, price),
            "price_from": price_source(instance_type, region, cfg) if price is not None else None}


def total_cost(costs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several jobs' bills (a tuning job's trials) summed: a job with no billable time billed none;
    the USD total is None if any billed job has no price."""
    billed = [c for c in costs if c.get("billable_seconds")]
    usd = [c["usd"] for c in billed]
    return {"jobs": len(costs), "billable_seconds": sum(c["billable_seconds"] * c["instance_count"] for c in billed),
            "usd": round(sum(usd), 4) if None not in usd else None,
            "price_from": next((c["price_from"] for c in billed if c.get("price_from")), None)}


def cost_line(cost: Mapping[str, Any], what: str) -> str:
    """One line: what was billed, and what that cost at which price (or why there is no figure)."""
    seconds = cost.get("billable_seconds")
    if seconds is None:
        return f"{what}: SageMaker reported no billable time"
    where = f" on {cost['instance_count']} x {cost['instance_type']}" if cost.get("instance_type") else ""
    trained = cost.get("training_seconds")
    spot = f" (of {trained} s trained: spot)" if trained and trained > seconds else ""
    if cost.get("usd") is None:
        return f"{what}: billed {seconds} s{where}{spot}; no price known for it (set sagemaker.prices)"
    rate = f" at ${cost['usd_per_hour']}/h" if cost.get("usd_per_hour") is not None else ""
    return f"{what}: billed {seconds} s{where}{spot}: ${cost['usd']:.3f}{rate} ({cost['price_from']})"


def endpoint_cost(created: Any, instance_count: int | None, instance_type: str | None, region: str | None,
                  cfg: Any, now: Any = None) -> dict[str, Any] | None:
    """A real-time endpoint's instance-hours since it was created, at its current instance count
    (autoscaling may have run more or fewer for a while: an estimate), and their cost. None for a
    serverless endpoint (billed per request) or when SageMaker gives no creation time."""
    from datetime import UTC, datetime

    if created is None or not instance_count or not instance_type:
        return None
    hours = max(0.0, ((now or datetime.now(UTC)) - created).total_seconds() / 3600) * instance_count
    price = hourly_price(instance_type, region, cfg)
    return {"instance_hours": round(hours, 2), "instance_type": instance_type, "usd_per_hour": price,
            "usd": round(hours * price, 2) if price is not None else None,
            "price_from": price_source(instance_type, region, cfg) if price is not None else None}
