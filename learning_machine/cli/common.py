"""What every `lm` command group shares: the consoles, the settings the app callback built, progress
lines, and the API tokens `lm up` wrote."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import typer
from rich.console import Console

from learning_machine.settings import Settings

console = Console(stderr=True)  # progress and messages
out = Console()  # results (tables, JSON)


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the `lm` callback built once for this invocation."""
    settings: Settings = ctx.obj
    return settings


def say(message: str) -> None:
    """One progress line, with the time."""
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", highlight=False)


def progress_for(settings: Settings, logger: str) -> Callable[[str], None]:
    """Where a long-running service's progress lines go: :func:`say` for a terminal, or its logger (INFO) when
    the log format is JSON, so every line of its log is one JSON object."""
    if settings.log_format == "json":
        import logging

        return logging.getLogger(logger).info
    return say


def token_for(settings: Settings, token: str | None, role: str = "data-scientist") -> str | None:
    """An explicit token (``--token``), else ``LM_TOKEN``, else the one `lm up` wrote for ``role``."""
    if token:
        return token
    if settings.token is not None:
        return settings.token.get_secret_value()
    try:
        return str(json.loads(settings.tokens_path().read_text())[role])
    except (FileNotFoundError, KeyError, ValueError):
        return None
