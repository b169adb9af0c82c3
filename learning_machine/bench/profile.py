"""Where a server's CPU time goes under the benchmark's own load: py-spy samples the running process (no
change to it, no restart) while a measurement runs, and the samples are summarised by the platform function
that was running (inclusive) and by the library at the top of the stack (self time).

`lm bench --section serving --profile` profiles each gateway during its sequential single rows, its 1,000-row
batches and its 8-client single-row run. Sampling costs the profiled process little (``--nonblocking``: it is never paused), but
py-spy itself needs CPU on the same cores: a profiled run's timings are for reading the profile, not for the
README's table."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROFILE_ENV = "LM_BENCH_PROFILE"
RATE_HZ = 250
# Frames every sample of a thread passes through (the command, a worker thread's loop guard): not news.
_WRAPPERS = ("cli.", "gateway.batching.PredictionBatcher._guard")
_STDLIB = re.compile(r"python3\.\d+")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

@dataclass
class Profile:
    """The summary of one sampled run: how many samples (at :data:`RATE_HZ`), over how many requests, the
    share of samples per platform function (inclusive: anywhere on the stack; innermost: the last platform
    function on the stack, with the library calls it made) and per library (self: at the top of the stack)."""

    name: str
    samples: int
    seconds: float
    requests: int
    cpu_s: float | None = None  # the process's CPU time meanwhile (from /proc), when measured
    functions: list[tuple[str, float]] = field(default_factory=list)
    innermost: list[tuple[str, float]] = field(default_factory=list)
    libraries: list[tuple[str, float]] = field(default_factory=list)

    @property
    def cpu_ms_per_request(self) -> float:
        """CPU time of the process per request (every thread together), in milliseconds: measured by the
        kernel when known, else estimated from the samples (which count a thread woken from a wait as busy)."""
        busy = self.cpu_s if self.cpu_s is not None else self.samples / RATE_HZ
        return busy * 1000 / max(self.requests, 1)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "samples": self.samples, "seconds": self.seconds, "requests": self.requests,
                "cpu_s": self.cpu_s,
                "cpu_ms_per_request": self.cpu_ms_per_request, "functions": self.functions,
                "innermost": self.innermost,
                "libraries": self.libraries}


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) process ``pid`` has used so far, from ``/proc`` (None where there is none)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sampled(pid: int, out: Path) -> Iterator[list[float]]:
    """Sample process ``pid`` (and its children) with py-spy into ``out`` (collapsed stacks) while the block
    runs; the list yielded gets the CPU seconds the process used meanwhile (from ``/proc``), when known.
    py-spy writes its file when interrupted, as on Ctrl-C."""
    from learning_machine.embedded.processes import venv_tool

    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".log").open("wb")
    proc = subprocess.Popen([venv_tool("py-spy"), "record", "--pid", str(pid), "--output", str(out),
                             "--format", "raw", "--rate", str(RATE_HZ), "--nonblocking", "--subprocesses"],
                            stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # attached before the load starts
    used: list[float] = []
    before = cpu_seconds(pid)
    try:
        yield used
    finally:
        after = cpu_seconds(pid)
        if before is not None and after is not None:
            used.append(after - before)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def summarise(raw: Path, name: str, *, seconds: float, requests: int, cpu_s: float | None = None,
              top: int = 14) -> Profile:
    """The :class:`Profile` of py-spy's collapsed stacks in ``raw`` (``frame;frame;... count`` per line);
    ``cpu_s``: the CPU seconds the process used meanwhile, when measured."""
    samples = 0
    functions: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_parse(frame) for frame in stack.split(";")]
        labels = [label for label, _ in frames if label is not None and not label.startswith(_WRAPPERS)]
        for label in dict.fromkeys(labels):  # each once per stack
            functions[label] += count
        if labels:
            innermost[labels[-1]] += count
        libraries[frames[-1][1] if frames else "other"] += count
    share = (lambda n: round(100 * n / samples, 1)) if samples else (lambda n: 0.0)
    return Profile(name, samples, seconds, requests, cpu_s,
                   [(label, share(n)) for label, n in functions.most_common(top)],
                   [(label, share(n)) for label, n in innermost.most_common(top)],
                   [(label, share(n)) for label, n in libraries.most_common(top)])


def _parse(frame: str) -> tuple[str | None, str]:
    """A frame's platform label (``module.function`` for the platform's own code, else None) and its library:
    the platform's subpackage, or the top-level module or package of the file (py-spy names files relative
    to the interpreter's path: ``sqlalchemy/engine/base.py``, ``threading.py``)."""
    match = _FRAME.match(frame)
    if match is None:
        return None, "other"
    function, file = match["function"], match["file"].replace("\\", "/")
    parts = file.split("/")
    if "learning_machine" in parts:
        package = max(i for i, part in enumerate(parts) if part == "learning_machine")
        module = ".".join(parts[package + 1:]).removesuffix(".py")
        return f"{module}.{function}", f"learning_machine.{module.split('.')[0]}"
    # Installed packages and the standard library, by absolute path: from the folder after site-packages or
    # pythonX.Y on (py-spy usually names them relative already).
    anchor = max((i for i, part in enumerate(parts) if part == "site-packages" or _STDLIB.fullmatch(part)),
                 default=None)
    if anchor is not None and anchor + 1 < len(parts):
        parts = parts[anchor + 1:]
    return None, parts[0].removesuffix(".py") or "other"


def markdown(profiles: list[Profile]) -> list[str]:
    """Each profile as Markdown lines: its CPU per request, then its top functions and libraries."""
    lines: list[str] = []
    for p in profiles:
        lines += [f"### {p.name}", "",
                  f"{p.samples:,} samples at {RATE_HZ} Hz over {p.seconds:.1f} s and {p.requests:,} requests: "
                  f"**{p.cpu_ms_per_request:.2f} ms of gateway CPU per request** (all threads; "
                  f"{'measured by the kernel' if p.cpu_s is not None else 'estimated from the samples'}).", "",
                  "| platform function (inclusive) | % of samples |", "|---|---|",
                  *[f"| `{label}` | {pct} |" for label, pct in p.functions], "",
                  "| innermost platform function (what it called included) | % of samples |", "|---|---|",
                  *[f"| `{label}` | {pct} |" for label, pct in p.innermost], "",
                  "| library at the top of the stack (self) | % of samples |", "|---|---|",
                  *[f"| {label} | {pct} |" for label, pct in p.libraries], ""]
    return lines
