"""A stand-in for the one SageMaker call moto 5.2.5 lacks that deploy --update needs: UpdateEndpoint.

It is a botocore `before-call.sagemaker.UpdateEndpoint` hook on the sessions bincli's endpoint code
makes (`install` wraps that module's boto_session), so the request never reaches moto. What it
fakes, in moto's own in-process backend (the test server runs in this process):
- success: checks that the endpoint and the new endpoint config exist, then points the endpoint at
  the new config (variants and instance counts from that config), InService at once;
- `fail_reason`: AWS's rollback: the endpoint stays InService on its old config, with that FailureReason;
- `error`: UpdateEndpoint itself refused (a ValidationException with that message).
Every request is kept in `calls`. Everything else (models, configs, describe, delete) is moto's.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.awsrequest import AWSResponse


class UpdateEndpointStandIn:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_reason: str | None = None
        self.error: str | None = None

    def install(self, monkeypatch) -> UpdateEndpointStandIn:
        from bincli.backends.sagemaker import endpoint

        real = endpoint.boto_session

        def session_with_standin(*args, **kwargs):
            session = real(*args, **kwargs)
            session.events.register("before-call.sagemaker.UpdateEndpoint", self._answer)
            return session

        monkeypatch.setattr(endpoint, "boto_session", session_with_standin)
        return self

    def _answer(self, params: dict[str, Any], context: dict[str, Any], **_: Any):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.sagemaker.models import sagemaker_backends

        request = json.loads(params["body"])
        self.calls.append(request)
        backend = sagemaker_backends[DEFAULT_ACCOUNT_ID][context["client_region"]]
        endpoint = backend.endpoints.get(request["EndpointName"])
        config = backend.endpoint_configs.get(request["EndpointConfigName"])
        if self.error or endpoint is None or config is None:
            message = self.error or "Could not find endpoint or endpoint config"
            return _reply(400, {"Error": {"Code": "ValidationException", "Message": message}})
        if self.fail_reason:
            endpoint.failure_reason = self.fail_reason
        else:
            endpoint.endpoint_config_name = config.endpoint_config_name
            endpoint.production_variants = endpoint._process_production_variants(config.production_variants)
            endpoint.failure_reason = None
        endpoint.endpoint_status = "InService"
        return _reply(200, {"EndpointArn": endpoint.arn})


def _reply(status: int, parsed: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    parsed["ResponseMetadata"] = {"HTTPStatusCode": status}
    return AWSResponse("http://standin", status, {}, None), parsed
