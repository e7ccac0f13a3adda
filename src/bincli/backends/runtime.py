"""The runtime client of backend sagemaker: boto3's invoke_endpoint, and PredictError, which every
runtime client (and the in-process predictor) raises for one refused image.

It reaches the real endpoint with boto3's credentials; pointed at a local server with endpoint_url
and signed=False it sends unsigned requests (no AWS account). The local backend itself answers with
backends/local/client.py (http.client: no boto3 to import). No torch here, and boto3 is imported
only when a client is built, so a cold `bincli predict` answers fast. A body over the backend's
`max_payload` (SageMaker: 6 MB, 4 MB serverless) is refused here, before it is sent.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from bincli.core.contract import JSON_CONTENT_TYPE
from bincli.errors import BincliError, StateError

LOCAL_REGION = "us-east-1"  # botocore needs a region to build a client; a local endpoint ignores it
MAX_ANSWER_BYTES = 1 << 20  # one photo's answer is ~300 bytes; an endless or huge body stops here


class RuntimeClient(Protocol):
    """What predict, evaluate and loadtest call an endpoint with (EndpointPredictor, LocalEndpointClient)."""

    name: str
    where: str  # the endpoint as messages name it

    def invoke(self, body: bytes, content_type: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


class PredictError(Exception):
    """The endpoint (or in-process handler) refused one image: its HTTP status and message."""

    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: Any, limit: int = 300) -> str:
    """What a remote party wrote, safe for a terminal: control characters (escape sequences, carriage
    returns, bidi overrides) shown as \\xNN / \\uNNNN, and at most `limit` characters."""
    text = str(text)[:limit]
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def runtime_error(where: str, code: str, message: str, original_status: Any = None,
                  original_message: str | None = None) -> Exception:
    """The error a runtime-API refusal means, for either runtime client: ModelError is the model's container
    refusing this image (PredictError with its own status and message); "Endpoint X not found." a wrong name.
    Every text the endpoint wrote goes through printable()."""
    code, message = printable(code, 80), printable(message)
    original_message = printable(original_message) if original_message is not None else None
    if code == "ModelError":
        return PredictError(int(original_status) if original_status else None, original_message or message)
    if code == "ValidationError" and "not found" in message.lower():
        return StateError(f"no endpoint {where}: {message}",
                          hint="check the name with 'bincli status', or run 'bincli deploy'")
    return BincliError(f"endpoint {where}: {code}: {message}")


def read_answer(read: Any, deadline: float, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """An answer's body through `read(n)`, at most `limit` bytes and until `deadline` (monotonic):
    an endless, huge or trickling body is one refused photo, not memory or a hang."""
    import time

    chunks, size = [], 0
    while True:
        chunk = read(min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PredictError(None, f"endpoint's answer is over {limit // 1024} KB; not read further")
        if time.monotonic() > deadline:
            raise PredictError(None, "the answer did not end within the timeout (predict.timeout)")


def decode_answer(payload: bytes, content_type: str | None) -> dict[str, Any]:
    """The answer's JSON, checked to have the handler's shape (core/counting.answer_problem)."""
    from bincli.core.counting import answer_problem

    try:
        answer = json.loads(payload)
    except (ValueError, RecursionError):
        raise PredictError(None, f"endpoint answered {printable(content_type, 80)}, not JSON") from None
    problem = answer_problem(answer)
    if problem:
        raise PredictError(None, f"endpoint's answer is not a count: {printable(problem)}")
    return answer


class EndpointPredictor:
    """invoke_endpoint through boto3's sagemaker-runtime client (thread-safe)."""

    def __init__(self, name: str, url: str | None = None, region: str | None = None, timeout: float = 30.0,
                 concurrency: int = 8, signed: bool = False, max_payload: int | None = None,
                 limit_of: str = "the endpoint"):
        import boto3
        import botocore
        from botocore.config import Config as BotoConfig

        self.name, self.url, self.timeout = name, url, timeout
        self.where = f"'{name}'" + (f" at {url}" if url else "")
        self.max_payload, self.limit_of = max_payload, limit_of
        config = BotoConfig(connect_timeout=min(timeout, 10.0), read_timeout=timeout,
                            retries={"max_attempts": 2, "mode": "standard"},
                            max_pool_connections=max(concurrency, 10),
                            signature_version=None if signed else botocore.UNSIGNED)
        session = boto3.session.Session()
        self.client = session.client("sagemaker-runtime", endpoint_url=url, config=config,
                                     region_name=region or session.region_name or (None if signed else LOCAL_REGION))

    def invoke(self, body: bytes, content_type: str) -> dict[str, Any]:
        import time

        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if self.max_payload is not None and len(body) > self.max_payload:
            # The endpoint would refuse it after the upload; say why without sending it.
            raise PredictError(413, f"{len(body) / 2**20:.1f} MB is over the {self.max_payload / 2**20:g} MB per "
                                    f"request of {self.limit_of}; not sent (resize or recompress the photo)")
        try:
            resp = self.client.invoke_endpoint(EndpointName=self.name, Body=body, ContentType=content_type,
                                               Accept=JSON_CONTENT_TYPE)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise runtime_error(self.where, error.get("Code", "?"), error.get("Message", str(exc)),
                                exc.response.get("OriginalStatusCode"), exc.response.get("OriginalMessage")) from None
        except ReadTimeoutError:
            raise PredictError(None, "no answer within the timeout (predict.timeout)") from None
        except NoCredentialsError:
            raise BincliError(f"endpoint {self.where}: no AWS credentials",
                              hint="configure boto3 credentials (AWS_PROFILE, ~/.aws) for backend sagemaker") from None
        except (ConnectionError, HTTPClientError) as exc:
            raise BincliError(f"cannot reach endpoint {self.where}: {exc}",
                              hint="is it running? 'bincli status' shows it; 'bincli deploy' starts it") from None
        try:
            stream = resp["Body"]
            # read1 (urllib3 2): what has come, so a trickle meets the deadline; read(n) waits for n bytes
            payload = read_answer(getattr(stream._raw_stream, "read1", stream.read), time.monotonic() + self.timeout)
        except ReadTimeoutError:
            raise PredictError(None, "no answer within the timeout (predict.timeout)") from None
        finally:
            resp["Body"].close()
        return decode_answer(payload, resp.get("ContentType"))

    def close(self) -> None:
        self.client.close()
