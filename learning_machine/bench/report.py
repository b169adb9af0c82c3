"""What a benchmark section returns (tables, notes, raw numbers) and how it is written as Markdown,
with the small timing helpers every section uses."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Table:
    """A further table of a section, under its own heading."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def markdown(self, level: str = "###") -> str:
        lines = [f"{level} {self.title}", ""] if self.title else []
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


@dataclass
class Section:
    """One benchmark section: a title, a table and notes; ``raw`` holds the numbers behind them (and what
    the plots are drawn from). The harness fills ``figures``, ``seconds`` and ``error``."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float | None = None
    error: str | None = None
    load: float | None = None

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.error:
            lines += [f"**This section failed:** `{self.error}`", ""]
        if self.columns:
            lines.append(Table("", self.columns, self.rows).markdown())
        lines += [t.markdown() for t in self.tables]
        lines += [f"![{caption}]({name})\n" for name, caption in self.figures]
        lines += [f"- {n}" for n in self.notes]
        if self.seconds is not None:
            lines += [f"- Section wall time: {self.seconds:.0f} s" + (
                f"; load average (1 min) at its end: {self.load:.1f} on {cpu_count()} CPU(s)." if self.load is not None
                else ".")]
        return "\n".join(lines) + "\n"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Wall times of ``repeats`` calls: median, min, max (seconds)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": float(len(times))}


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x): cost grows as x to this power (1 = linear)."""
    points = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(points) < 2:
        return None
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else None


def cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> None:
    """Fail with the install command when a program of the ``bench`` extra is not in this environment."""
    import shutil

    from learning_machine.embedded.processes import venv_tool
    from learning_machine.errors import BenchmarkError

    if shutil.which(venv_tool(name)) is None:
        raise BenchmarkError(f"{name} is not installed: `lm bench` needs the bench extra "
                             "(`make install`, or `uv sync --extra bench`)")


def require_extra(module: str) -> None:
    """Fail with the install command when a package of the ``bench`` extra is missing."""
    import importlib.util

    from learning_machine.errors import BenchmarkError

    if importlib.util.find_spec(module) is None:
        raise BenchmarkError(f"{module} is not installed: `lm bench` needs the bench extra "
                             "(`make install`, or `uv sync --extra bench`)")
