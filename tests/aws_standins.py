"""Small stand-ins for what moto 5.2.6 does not do, as botocore event hooks on the sessions bincli's
SageMaker endpoint code makes (`on_sessions` wraps that module's boto_session; teardown and update
get their clients there too). Everything not hooked goes to the moto server.

- `refuse`: an API refusal moto never gives (Application Auto Scaling AccessDenied, throttling, a
  ListTags the caller may not do): the request never reaches moto and gets the error reply.
- `fix_moto_tagging_arns`: moto's Resource Groups Tagging API returns a SageMaker endpoint config's
  ARN as the repr of a one-item tuple ("('arn:...',)"); this puts the plain ARN back, as AWS sends it.
- `count`: an observer that only counts the calls (they still go to moto).
- `moto_endpoint`: moto's in-process endpoint object, to set a status AWS would go through
  (Creating) but moto skips.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from botocore.awsrequest import AWSResponse


def on_sessions(monkeypatch, event: str, handler: Callable[..., Any]) -> None:
    """Register `handler` for `event` on every session the endpoint module makes from now on."""
    from bincli.backends.sagemaker import endpoint

    real = endpoint.boto_session

    def session_with_hook(*args, **kwargs):
        session = real(*args, **kwargs)
        session.events.register(event, handler)
        return session

    monkeypatch.setattr(endpoint, "boto_session", session_with_hook)


def refuse(code: str, message: str, when: Callable[[dict[str, Any]], bool] = lambda params: True,
           status: int = 400) -> Callable[..., Any]:
    """A before-call handler answering `code` to the requests `when(params)` picks; `calls` counts them."""
    def handler(params: dict[str, Any], **_: Any):
        if not when(params):
            return None
        handler.calls += 1
        parsed = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return AWSResponse("http://standin", status, {}, None), parsed

    handler.calls = 0
    return handler


def count() -> Callable[..., Any]:
    def handler(**_: Any) -> None:
        handler.calls += 1

    handler.calls = 0
    return handler


def fix_moto_tagging_arns(monkeypatch) -> None:
    def fix(parsed: dict[str, Any], **_: Any) -> None:
        for mapping in parsed.get("ResourceTagMappingList", []):
            found = re.search(r"arn:[^'\"]+", mapping["ResourceARN"])
            mapping["ResourceARN"] = found.group(0) if found else mapping["ResourceARN"]

    on_sessions(monkeypatch, "after-call.resource-groups-tagging-api.GetResources", fix)


def moto_endpoint(name: str, region: str = "us-east-1") -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[DEFAULT_ACCOUNT_ID][region].endpoints[name]
