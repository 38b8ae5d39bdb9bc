"""Injected faults for tests: answer an error, sleep first, or drop the connection.

A fault matches on the HTTP method (None: any) and a regular expression
searched in the request path (query string excluded). Each match uses one of
its ``times``; ``times <= 0`` keeps it until ``clear_faults()``.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass


@dataclass
class Fault:
    """One injected fault and how often it has fired (``hits``)."""

    method: str | None
    path_regex: str
    status: int | None = None
    delay: float = 0.0
    drop: bool = False
    times: int = 1
    hits: int = 0

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path_regex)
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError(f"fault status must be an HTTP error code (400-599), got {self.status}")

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self._pattern.search(path) is not None

    @property
    def exhausted(self) -> bool:
        return self.times > 0 and self.hits >= self.times


class FaultTable:
    """Thread-safe list of faults; ``take`` returns the first live match and counts the hit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if not fault.exhausted and fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None
