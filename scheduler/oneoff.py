"""One-off units: `run APP CMD` and the release phase.

A one-off unit is a unit of a release's image, config and plan, outside the
formation (the reconcile loop leaves it alone). It runs the command through
bae-launch (profile.d, bash -c), streams its output — interactively with a TTY
when asked — and is removed when done; its exit code is the caller's, and a
memory kill is said in words. Works
with any ``scheduler.runtime.Runtime``.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Callable

from scheduler.plans import memory_label
from scheduler.runtime import Attached, OneOff, Runtime

__all__ = ["run_oneoff"]


def run_oneoff(runtime: Runtime, job: OneOff, *, stdin: Callable[[int], bytes] | None,
               stdout: Callable[[bytes], None],
               stderr: Callable[[bytes], None], timeout: float | None = None,
               resize: Callable[[Callable[[int, int], None]], None] | None = None,
               alive: Callable[[], bool] = lambda: True) -> int:
    """Run ``job`` to completion; returns its exit code (the unit is removed in every case).

    Past ``timeout`` seconds the unit is stopped (exit 124); once ``alive()`` turns false
    (the caller went away) too (exit 130)."""
    unit_name = f"{job.name}.{secrets.randbelow(9000) + 1000}"
    with runtime.attach(job, unit_name, stdin is not None) as unit:
        if job.tty and job.size:
            unit.resize(*job.size)
        if resize is not None:
            resize(unit.resize)
        if stdin is not None:
            threading.Thread(target=_pump_stdin, args=(stdin, unit, not job.tty), daemon=True).start()
        reader = threading.Thread(target=_pump_output, args=(unit, stdout, stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout if timeout else None
        while reader.is_alive():
            reader.join(0.2)
            if (deadline and time.monotonic() > deadline) or not alive():
                unit.kill()
                reader.join(5)
                if deadline and time.monotonic() > deadline:
                    stderr(f"the command ran longer than {timeout:.0f} s and was stopped\n".encode())
                    return 124
                return 130
        code = unit.wait()
        if code != 0 and unit.oom():  # not only "exit 137": say why
            stderr(f"{unit_name} exceeded its {memory_label(job.workload.memory)} memory limit: "
                   f"a process of it was killed (exit {code})\n".encode())
        return code


def _pump_stdin(read: Callable[[int], bytes], unit: Attached, close_on_eof: bool) -> None:
    """Copy what the user types (or pipes) to the unit. Without a TTY, EOF closes the unit's
    stdin (so `cat` ends); with one, EOF is the terminal's business (^D), and closing would hang it up."""
    try:
        while True:
            data = read(65536)
            if not data:
                break
            unit.send(data)
    except OSError:
        return
    if close_on_eof:
        unit.close_input()


def _pump_output(unit: Attached, stdout: Callable[[bytes], None], stderr: Callable[[bytes], None]) -> None:
    for stream, data in unit.output():
        (stderr if stream == 2 else stdout)(data)
