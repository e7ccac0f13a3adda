"""The price lookup behind the cost lines: the dated table, the config's overrides, unknowns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bincli.backends.sagemaker.pricing import ON_DEMAND_USD_PER_HOUR, hourly_price, job_cost
from bincli.config import SageMakerConfig, load_config
from bincli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _sagemaker(prices=None):
    return load_config(None, overrides={"sagemaker.prices": prices}, env={}).config.sagemaker


def test_every_instance_type_the_shipped_configs_use_has_a_price():
    cfg = _sagemaker()
    for name in ("sagemaker.yaml", "local.yaml"):
        section = yaml.safe_load((ROOT / "configs" / name).read_text())["sagemaker"]
        for key in ("train_instance_type", "deploy_instance_type"):
            if section.get(key):
                assert hourly_price(section[key], "us-east-1", cfg) is not None, (name, key)


def test_config_prices_replace_the_table_and_cover_other_regions():
    cfg = _sagemaker({"ml.g4dn.xlarge": 0.5})
    assert hourly_price("ml.g4dn.xlarge", "us-east-1", cfg) == 0.5
    assert hourly_price("ml.g4dn.xlarge", "eu-west-1", cfg) == 0.5
    assert hourly_price("ml.m5.large", "us-east-1", cfg) == ON_DEMAND_USD_PER_HOUR["ml.m5.large"]


def test_an_unknown_type_or_region_has_no_price_rather_than_a_guess():
    cfg = _sagemaker()
    assert hourly_price("ml.m5.large", "eu-west-1", cfg) is None
    assert hourly_price("ml.x99.huge", "us-east-1", cfg) is None


def test_job_cost_is_billable_seconds_times_instances_times_price():
    assert job_cost(1800, 2, 0.736) == pytest.approx(0.736)
    assert job_cost(None, 1, 0.736) is None and job_cost(60, 1, None) is None


@pytest.mark.parametrize(("prices", "says"), [
    ({"g4dn": 0.5}, "sagemaker.prices.g4dn"),
    ({"ml.m5.large": -1}, "sagemaker.prices.ml.m5.large"),
])
def test_config_prices_reject_a_bad_key_or_price_naming_it(prices, says):
    with pytest.raises(ConfigError) as exc:
        _sagemaker(prices)
    assert says in str(exc.value)


def test_a_job_in_a_region_without_a_price_says_so_and_totals_stay_unknown():
    from bincli.backends.sagemaker.pricing import cost_line, total_cost, training_cost

    job = {"BillableTimeInSeconds": 120, "TrainingTimeInSeconds": 400,
           "ResourceConfig": {"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 2}}
    cost = training_cost(job, "eu-west-1", _sagemaker())
    assert (cost["usd"], cost["usd_per_hour"], cost["price_from"]) == (None, None, None)
    assert cost_line(cost, "training job j") == ("training job j: billed 120 s on 2 x ml.g4dn.xlarge (of 400 s "
                                                 "trained: spot); no price known for it (set sagemaker.prices)")
    priced = training_cost(job, "eu-west-1", _sagemaker({"ml.g4dn.xlarge": 0.9}))
    assert priced["usd"] == pytest.approx(120 * 2 * 0.9 / 3600) and priced["price_from"] == "sagemaker.prices"
    # Summed: instance-seconds; one unpriced billed job leaves the total unknown, an unbilled one does not.
    assert total_cost([priced, cost])["usd"] is None and total_cost([priced, cost])["billable_seconds"] == 480
    unbilled = training_cost({"ResourceConfig": job["ResourceConfig"]}, "eu-west-1", _sagemaker())
    assert total_cost([priced, unbilled])["usd"] == priced["usd"]
    assert cost_line(unbilled, "training job k") == "training job k: SageMaker reported no billable time"


def test_an_endpoints_instance_hours_so_far_and_their_cost():
    from datetime import UTC, datetime, timedelta

    from bincli.backends.sagemaker.pricing import endpoint_cost

    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    cost = endpoint_cost(now - timedelta(hours=3), 2, "ml.m5.large", "us-east-1", SageMakerConfig(), now=now)
    assert (cost["instance_hours"], cost["usd_per_hour"], cost["usd"]) == (6.0, 0.115, 0.69)
    assert endpoint_cost(now, None, None, "us-east-1", SageMakerConfig(), now=now) is None  # serverless
    unknown = endpoint_cost(now - timedelta(hours=1), 1, "ml.x9.huge", "us-east-1", SageMakerConfig(), now=now)
    assert unknown["instance_hours"] == 1.0 and unknown["usd"] is None
