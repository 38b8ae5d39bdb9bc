"""The sandbox cluster in its own process, counting the API requests it answers.

    python bench/sandbox_process.py KUBECONFIG [NAMESPACE ...]

A benchmark that runs the sandbox in its own process would have the direct client fight the
sandbox for the GIL (issue 18), so the benchmarks start it here. It writes ``KUBECONFIG``,
prints one JSON line (``{"url": ..., "kubeconfig": ...}``) when it is ready, then answers
lines on stdin: ``counts`` prints the requests answered since the last ``reset`` as one JSON
object (``"GET /apis/...": n``, watches as ``"WATCH /apis/..."``), ``reset`` zeroes them and
prints ``{}``. It stops at the end of stdin. :class:`SandboxProcess` drives it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent


class SandboxProcess:
    """``with SandboxProcess(tmp / "kubeconfig", ["bench"]) as sandbox: sandbox.counts()``."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], rollout_delay: float = 0.0) -> None:
        self.kubeconfig = kubeconfig
        self._args = [sys.executable, str(HERE / "sandbox_process.py"), str(kubeconfig), *namespaces]
        self._env_delay = str(rollout_delay)
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SandboxProcess:
        import os

        env = {**os.environ, "BENCH_ROLLOUT_DELAY": self._env_delay}
        self._proc = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, env=env)
        self.url = self._ask(None)["url"]
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=10)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def _ask(self, command: str | None) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        if command is not None:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sandbox process ended (exit {self._proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def counts(self) -> Counter[str]:
        """Requests answered since the last reset, by method and path."""
        return Counter(self._ask("counts"))

    def reset(self) -> None:
        self._ask("reset")


def main(argv: list[str]) -> None:
    import os

    from opsgate.sandbox import SandboxCluster

    kubeconfig, namespaces = Path(argv[0]), argv[1:]
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    with SandboxCluster(rollout_delay=float(os.environ.get("BENCH_ROLLOUT_DELAY", "0")),
                        namespaces=namespaces) as cluster:
        handle = cluster.api.handle

        def counting(request: Any) -> Any:
            verb = "WATCH" if request.query.get("watch") in ("1", "true") else request.method
            with lock:
                counts[f"{verb} {request.path}"] += 1
            return handle(request)

        cluster.api.handle = counting  # type: ignore[method-assign,assignment]
        cluster.write_kubeconfig(kubeconfig)
        print(json.dumps({"url": cluster.url, "kubeconfig": str(kubeconfig)}), flush=True)
        for line in sys.stdin:
            with lock:
                if line.strip() == "reset":
                    counts.clear()
                print(json.dumps(dict(counts) if line.strip() == "counts" else {}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
