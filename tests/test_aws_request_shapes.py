"""The request check every test runs under (tests/aws_request_shapes.py) catches what AWS refuses."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

import aws_request_shapes
from aws_request_shapes import problems


@pytest.fixture(scope="module")
def sagemaker_model():
    return boto3.Session(region_name="us-east-1").client("sagemaker").meta.service_model


def test_a_name_outside_the_pattern_an_enum_value_and_too_many_tags(sagemaker_model):
    create = sagemaker_model.operation_model("CreateEndpoint").input_shape
    ok = {"EndpointName": "bincli-3f2a", "EndpointConfigName": "bincli-3f2a-20261207-101500"}
    assert problems(create, ok, "CreateEndpoint") == []
    bad = problems(create, {**ok, "EndpointName": "bin_cli!"}, "CreateEndpoint")
    assert len(bad) == 1 and bad[0].startswith("CreateEndpoint.EndpointName: 'bin_cli!' does not match")
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    assert problems(create, {**ok, "Tags": tags}, "CreateEndpoint") == [
        "CreateEndpoint.Tags: 51 items, more than 50"]

    transform = sagemaker_model.operation_model("CreateTransformJob").input_shape
    found = problems(transform, {"BatchStrategy": "Everything", "MaxPayloadInMB": -1}, "CreateTransformJob")
    assert found == ["CreateTransformJob.MaxPayloadInMB: -1 is below the minimum 0",
                     "CreateTransformJob.BatchStrategy: 'Everything' is not one of ['MultiRecord', 'SingleRecord']"]


def test_every_client_made_in_a_test_checks_its_requests():
    client = boto3.Session(region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x").client("sagemaker")
    with Stubber(client) as stub:
        stub.add_response("delete_endpoint", {})
        client.delete_endpoint(EndpointName="not a name")
    seen, aws_request_shapes.VIOLATIONS[:] = list(aws_request_shapes.VIOLATIONS), []  # this test's own, on purpose
    assert seen == ["sagemaker DeleteEndpoint.EndpointName: 'not a name' does not match "
                    "'[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}'"]
