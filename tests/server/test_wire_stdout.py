"""The stdio edges on the event loop (server/wire.py): answers written by ``claim_stdout``, requests read
by ``ScreenedStdin`` from a pipe without a thread.

Real processes and real pipes: a stray print while serving goes to stderr, never between two answers; a
client that reads slowly makes a long answer wait for the pipe while the loop keeps running; fd 1 is back
on the pipe afterwards; stdout that is not a pipe is left to the SDK. Stdin read on the loop (a pipe) gives
the very lines the reading thread gives (a file).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio

from opsgate.server.wire import ScreenedStdin

SCRIPT = r"""
import os, sys
import anyio
from opsgate.server.wire import claim_stdout

async def main() -> None:
    with claim_stdout() as out:
        if out is None:
            print("not claimed", file=sys.stderr)
            return
        print("stray print", flush=True)
        os.write(1, b"stray write\n")
        await out.write('{"jsonrpc":"2.0","id":1,"result":{}}\n')
        await out.flush()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(tick)
            await out.write("x" * (1 << 20) + "\n")  # 16 pipe buffers: the reader is asleep meanwhile
            await out.flush()
            tasks.cancel_scope.cancel()
        print(f"ticks {ticks}", file=sys.stderr)
    print("after", flush=True)

anyio.run(main)
"""


def test_answers_go_to_the_pipe_strays_to_stderr_and_a_slow_reader_never_blocks_the_loop() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    time.sleep(0.3)  # the long answer fills the pipe and waits for this reader
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert first == b'{"jsonrpc":"2.0","id":1,"result":{}}\n'
    assert rest == b"x" * (1 << 20) + b"\n" + b"after\n"
    lines = err.decode().splitlines()
    assert lines[:2] == ["stray print", "stray write"]
    assert int(lines[2].split()[1]) > 20, "the loop stood still while the answer waited for the pipe"


def test_stdout_that_is_not_a_pipe_is_left_to_the_sdk(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        done = subprocess.run([sys.executable, "-c", SCRIPT], stdout=sink, stderr=subprocess.PIPE, timeout=30,
                              check=False)
    assert done.returncode == 0 and done.stderr.decode().splitlines() == ["not claimed"]
    assert out.read_bytes() == b""


LINES = [b'{"jsonrpc":"2.0","id":1,"method":"ping"}', b"not json", b"[" * 100 + b"]" * 100, "\u00e9\u2028".encode(),
         b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":[]}', b"x" * 200_000, b"last, no newline"]


def _read_all(fd: int) -> list[str]:
    async def collect() -> list[str]:
        return [line async for line in ScreenedStdin(fd=fd)]

    return anyio.run(collect)


def test_stdin_from_a_pipe_on_the_loop_reads_what_the_thread_reads_from_a_file(tmp_path: Path) -> None:
    data = b"\n".join(LINES)
    file = tmp_path / "stdin"
    file.write_bytes(data)
    fd = os.open(file, os.O_RDONLY)
    try:
        from_file = _read_all(fd)  # a regular file: the reading thread
    finally:
        os.close(fd)
    read_end, write_end = os.pipe()

    def feed() -> None:  # in pieces, as a client writes
        for start in range(0, len(data), 7_000):
            os.write(write_end, data[start : start + 7_000])
            time.sleep(0.001)
        os.close(write_end)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        from_pipe = _read_all(read_end)
    finally:
        feeder.join(10)
        os.close(read_end)
    assert from_pipe == from_file and len(from_pipe) == len(LINES)
