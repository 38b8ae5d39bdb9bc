"""What the stand-in kubelet knows about a pod: its log lines, container and image ids; the log and exec answers.

The sandbox runs no containers. Its kubelet still writes the lines it would
log about a container it starts, so ``kubectl logs`` answers 200 with those
(``container``, ``tailLines``, ``limitBytes``, ``timestamps``, ``sinceSeconds``
as the kubelet applies them), and ``exec``/``attach``/``portforward`` answer a
Status that says why they cannot work here, never a 404 that makes a client
report a missing pod.
"""

from __future__ import annotations

import calendar
import hashlib
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError, bad_request

JSON = dict[str, Any]

NODE_NAME = "sandbox-node"
NODE_IP = "10.0.0.1"
RUNTIME = "sandbox"  # the scheme of containerID, as containerd:// on a real node
MAX_LINES_PER_CONTAINER = 1000
STREAM_SUBRESOURCES = frozenset({"log", "exec", "attach", "portforward"})


def image_reference(image: str) -> tuple[str, str]:
    """``nginx:1.25`` -> (``docker.io/library/nginx:1.25``, ``docker.io/library/nginx``), as the runtime names it."""
    name, _, digest = image.partition("@")
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name if rest else 'library/' + name}"
    repo = name
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    elif not digest:
        name = f"{name}:latest"
    return (f"{name}@{digest}" if digest else name), repo


def image_id(image: str) -> str:
    """``imageID``: repository@digest. The sandbox pulls nothing, so the digest is the sha256 of the reference."""
    full, repo = image_reference(image)
    if "@" in full:
        return full
    return f"{repo}@sha256:{hashlib.sha256(full.encode()).hexdigest()}"


def container_id(pod_uid: str, container: str) -> str:
    return f"{RUNTIME}://{hashlib.sha256(f'{pod_uid}/{container}'.encode()).hexdigest()}"


@dataclass(frozen=True)
class LogLine:
    stamp: float
    text: str


def _rfc3339_nano(stamp: float) -> str:
    whole = int(stamp)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((stamp - whole) * 1e9):09d}Z"


def _int_param(query: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(str(raw))
    except ValueError as exc:
        raise bad_request(f"{name}: Invalid value: {raw!r}: must be an integer") from exc
    if value < minimum:
        raise bad_request(f"{name}: Invalid value: {value}: must be greater than or equal to {minimum}")
    return value


def _since_time(raw: str | None) -> float | None:
    """``sinceTime`` (RFC 3339, seconds precision as the kubelet reads it)."""
    if not raw:
        return None
    try:
        return float(calendar.timegm(time.strptime(raw[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError as exc:
        raise bad_request(f"sinceTime: Invalid value: {raw!r}: must be an RFC 3339 time") from exc


def select_log(lines: list[LogLine], query: Mapping[str, str], now: float) -> bytes:
    """The kubelet's reading of a container log: sinceSeconds or sinceTime, tailLines, timestamps, limitBytes."""
    since = _int_param(query, "sinceSeconds", 1)
    tail = _int_param(query, "tailLines", 0)
    limit = _int_param(query, "limitBytes", 1)
    start = now - since if since is not None else _since_time(query.get("sinceTime"))
    chosen = [line for line in lines if start is None or line.stamp >= start]
    if tail is not None:
        chosen = chosen[len(chosen) - tail :] if tail else []
    stamps = (query.get("timestamps") or "").lower() in ("1", "true")
    data = "".join(f"{_rfc3339_nano(line.stamp)} {line.text}\n" if stamps else f"{line.text}\n" for line in chosen)
    out = data.encode()
    return out[:limit] if limit is not None else out


def pod_containers(pod: JSON) -> list[str]:
    spec = pod.get("spec") or {}
    return [str(c.get("name", "")) for c in spec.get("containers") or [] if isinstance(c, dict)]


def log_container(pod: JSON, requested: str | None) -> str:
    """The container a log request is for, with the API server's and kubelet's 400s."""
    name = str((pod.get("metadata") or {}).get("name", ""))
    containers = pod_containers(pod)
    init = [str(c.get("name", "")) for c in (pod.get("spec") or {}).get("initContainers") or []
            if isinstance(c, dict)]
    if not requested:
        if len(containers) != 1:
            raise bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(containers)}]"
                + (f" or one of the init containers: [{' '.join(init)}]" if init else "")
            )
        requested = containers[0]
    if requested not in containers and requested not in init:
        raise bad_request(f"container {requested} is not valid for pod {name}")
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    running = any(s.get("name") == requested and "running" in (s.get("state") or {}) for s in statuses)
    if not running:
        raise bad_request(f'container "{requested}" in pod "{name}" is waiting to start: ContainerCreating')
    return requested


def no_containers(pod_name: str, action: str) -> ApiError:
    """exec, attach and port-forward: nothing runs in the sandbox, so there is nothing to connect to."""
    what = {"exec": "run a command in", "attach": "attach to", "portforward": "forward a port to"}[action]
    return bad_request(
        f"the opsgate sandbox does not run containers: it cannot {what} pod {pod_name} "
        "(pods there are records only; use a real cluster for exec, attach and port-forward)"
    )


class PodLogs:
    """The lines the stand-in kubelet wrote per container, newest last, bounded; dropped with the pod."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[tuple[str, str, str], deque[LogLine]] = {}

    def write(self, namespace: str, pod: str, container: str, text: str, stamp: float | None = None) -> None:
        with self._lock:
            lines = self._lines.setdefault((namespace, pod, container), deque(maxlen=MAX_LINES_PER_CONTAINER))
            lines.append(LogLine(time.time() if stamp is None else stamp, text))

    def read(self, namespace: str, pod: str, container: str) -> list[LogLine]:
        with self._lock:
            return list(self._lines.get((namespace, pod, container), ()))

    def drop(self, namespace: str, pod: str) -> None:
        with self._lock:
            for key in [k for k in self._lines if k[:2] == (namespace, pod)]:
                del self._lines[key]
