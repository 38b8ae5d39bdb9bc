"""The HTTP client for model servers (KServe, Triton): one pooled connection set, capped answers, errors quoted."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from opsgate import telemetry

from ..errors import ToolError
from ..oip import (
    ModelMetadata,
    error_text,
    parse_metadata,
)

if TYPE_CHECKING:
    from urllib3 import PoolManager


CONNECT_TIMEOUT: Final = 3.0
RESPONSE_MAX_BYTES: Final = 4 * 2**20
_pool_lock = threading.Lock()
_pools: list[PoolManager] = []
_META_CACHE_SIZE: Final = 64
_meta_cache: OrderedDict[tuple[str, ...], ModelMetadata] = OrderedDict()


def _pool() -> PoolManager:
    """One keep-alive pool for every model server, made on first use (urllib3 is imported then)."""
    if _pools:
        return _pools[0]
    with _pool_lock:
        if not _pools:
            import urllib3

            _pools.append(urllib3.PoolManager(num_pools=32, maxsize=8, retries=False))
        return _pools[0]


@dataclass(frozen=True, slots=True)
class Answer:
    """A model server's answer: status, body (within the size cap), headers."""

    status: int
    body: bytes
    headers: Mapping[str, str]


def request(method: str, url: str, body: bytes | None, read_timeout: float, what: str) -> Answer:
    """One request to a model server; the answer is read up to the size cap. ToolError on any failure.

    With telemetry on, a CLIENT span with W3C ``traceparent`` sent (KServe's tracing joins the trace) and
    the body sizes each way recorded."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if not telemetry.ON:
        return _send(method, url, body, headers, read_timeout, what)
    with telemetry.http_span(method, url, "model-server") as span:
        telemetry.inject(headers)
        answer = _send(method, url, body, headers, read_timeout, what)
        span.set_attribute("http.response.status_code", answer.status)
    sizes = {"http.request.method": method, "http.response.status_code": answer.status}
    telemetry.record(telemetry.INFERENCE_REQUEST_SIZE, len(body or b""), sizes)
    telemetry.record(telemetry.INFERENCE_RESPONSE_SIZE, len(answer.body), sizes)
    return answer


def _send(method: str, url: str, body: bytes | None, headers: dict[str, str], read_timeout: float,
          what: str) -> Answer:
    import urllib3
    from urllib3.exceptions import (
        ConnectTimeoutError,
        HTTPError,
        MaxRetryError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
    )

    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=read_timeout)
    response = None
    try:
        response = _pool().request(method, url, body=body, headers=headers, timeout=timeout, retries=False,
                                   redirect=False, preload_content=False)
        data = response.read(RESPONSE_MAX_BYTES + 1)
        if len(data) > RESPONSE_MAX_BYTES:
            response.close()  # a half-read body: this connection must not be reused
            raise ToolError(f"{what}: the answer from {url} is over {RESPONSE_MAX_BYTES // 2**20} MiB; send a "
                            "smaller batch", code="model_error", rule="response-too-large")
        response.release_conn()
        return Answer(response.status, data, response.headers)
    except HTTPError as exc:
        if response is not None:
            response.close()
        cause: BaseException = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
        if isinstance(cause, NewConnectionError):
            raise _unreachable(what, url, f"cannot connect ({_reason(cause)})", "connect-failed") from None
        if isinstance(cause, ConnectTimeoutError):
            raise _unreachable(what, url, f"no connection within {CONNECT_TIMEOUT:g} s", "timeout") from None
        if isinstance(cause, ReadTimeoutError):
            raise ToolError(f"{what}: the model server at {url} did not answer within {read_timeout:g} s "
                            "(timeout_seconds)", code="timeout", rule="read-timeout") from None
        if isinstance(cause, ProtocolError):
            raise _unreachable(what, url, f"the connection was dropped ({_reason(cause)})",
                               "connection-dropped") from None
        raise _unreachable(what, url, f"{type(cause).__name__}: {_reason(cause)}", "connect-failed") from None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if "object at 0x" in text else text


def _unreachable(what: str, url: str, why: str, rule: str) -> ToolError:
    return ToolError(f"{what}: the model server at {url} did not answer: {why}", code="model_unreachable", rule=rule)


_HTTP_RULES: Final[Mapping[int, str]] = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    413: "too-large", 422: "invalid", 429: "too-many-requests", 501: "not-implemented", 503: "unavailable",
}


class ModelServerError(ToolError):
    """A model server's own error answer; ``status`` (its HTTP status) reaches the envelope's ``http_status``."""

    def __init__(self, message: str, *, status: int, field: str | None, rule: str) -> None:
        super().__init__(message, code="model_error", field=field, rule=rule, status=status)
        self.status: int = status


def _quoted(body: bytes, limit: int = 1000) -> tuple[str, bool]:
    """The server's text (its ``{"error"}`` message, else the body) as a capped JSON string literal,
    and whether the body was JSON: outside words are quoted in our sentences, never spliced in."""
    try:
        json.loads(body)
        is_json = True
    except (ValueError, UnicodeDecodeError):
        is_json = False
    return json.dumps(error_text(body, limit), ensure_ascii=False), is_json


def model_http_error(status: int, body: bytes, what: str, url: str) -> ModelServerError:
    """A model server's error answer (KServe's and Triton's ``{"error": "..."}``, or any body) relayed
    quoted and capped, with its HTTP status; ``field`` says what to look at: the model's name for
    404/503, else the inputs sent. Pure."""
    rule = _HTTP_RULES.get(status) or ("server-error" if status >= 500 else f"http-{status}")
    said, is_json = _quoted(body)
    how = "saying" if is_json else "with a body that is not JSON"
    return ModelServerError(f"{what}: the model server at {url} answered HTTP {status}, {how}: {said}",
                            status=status, field="name" if status in (404, 503) else "inputs", rule=rule)


def json_of(response: Answer, what: str, url: str) -> Any:
    if response.status != 200:
        raise model_http_error(response.status, response.body, what, url)
    try:
        return json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        raise ToolError(f"{what}: the model server at {url} answered HTTP 200 with a body that is not JSON: "
                        f"{_quoted(response.body, 200)[0]}", code="model_error", rule="bad-response") from None


def model_metadata(base: str, name: str, key: tuple[str, ...], timeout: float) -> ModelMetadata:
    """The model's metadata, cached per service version (uid, resourceVersion) and URL."""
    with _pool_lock:
        cached = _meta_cache.get(key)
        if cached is not None:
            _meta_cache.move_to_end(key)
            return cached
    url = f"{base}/v2/models/{quote(name, safe='')}"
    what = f"read the metadata of model {name}"
    meta_doc = parse_metadata(json_of(request("GET", url, None, timeout, what), what, url), what)
    with _pool_lock:
        _meta_cache[key] = meta_doc
        while len(_meta_cache) > _META_CACHE_SIZE:
            _meta_cache.popitem(last=False)
    return meta_doc
