"""What SageMaker instances cost: one price lookup for the cost lines before and after a billed step.

The table is SageMaker's published on-demand list price (USD per instance-hour, us-east-1) as bincli
recorded it; it is not fetched, so it ages: `sagemaker.prices` in the config replaces any entry (and
is the only source for other regions). For these types the training and real-time hosting prices
are the same. Spot training is not a separate price: SageMaker's BillableTimeInSeconds is already
the spot-discounted time, so its cost is billable seconds x count x this price.
"""

from __future__ import annotations

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
