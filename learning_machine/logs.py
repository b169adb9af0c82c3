"""Log lines of the long-running services (gateway, monitor, dashboard, the model server's runtimes): plain
text for a terminal, or one JSON object per line for a log collector (``LM_LOG_FORMAT=json``, the chart's
default), each carrying the id of the request it belongs to.

The request id lives in a context variable: the gateway sets it from ``X-Request-ID`` (or a new id) for the
whole of a request, so every line logged while answering it, by our code or by a library, carries it. Nothing
here is configured at import time: an entry point calls :func:`configure_logging` once."""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("lm_request_id", default=None)
"""The id of the request being answered (None outside a request)."""

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What every LogRecord has; anything else on a record came from `extra=` and is written as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``,
    ``message``, ``request_id`` (from the record, else the current request's), ``exc_info`` (the formatted
    traceback) when there is one, and the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain line, with ``(request <id>)`` appended while a request is being answered."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        return f"{line} [request {request_id}]" if request_id and request_id not in line else line


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (``text`` or ``json``)."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; valid: {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure_logging(log_format: str = "text", level: str | int = "INFO", *, quiet: tuple[str, ...] = ()) -> None:
    """One handler on the root logger (standard error) writing ``log_format``; every other handler of the
    root logger and of uvicorn's loggers is removed so each line is written once, in one format. ``quiet``:
    loggers held at WARNING (a line per outgoing request is noise)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib = logging.getLogger(name)
        for old in list(lib.handlers):
            lib.removeHandler(old)
        lib.propagate = True
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


def dict_config(log_format: str, level: str = "INFO") -> dict[str, Any]:
    """The same as a :func:`logging.config.dictConfig` document (MLServer's ``logging_settings``)."""
    factory = f"{__name__}.{'JsonFormatter' if log_format == 'json' else 'TextFormatter'}"
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"lm": {"()": factory}},
            "handlers": {"lm": {"class": "logging.StreamHandler", "formatter": "lm"}},
            "root": {"handlers": ["lm"], "level": level},
            "loggers": {name: {"handlers": [], "propagate": True}
                        for name in ("mlserver", "uvicorn", "uvicorn.error", "uvicorn.access")}}


def reformat(prefix: str, log_format: str) -> int:
    """Give our formatter to the handlers a library installed on its own loggers (Streamlit's, which do not
    propagate to the root logger); returns how many handlers were changed. Loggers it creates later keep its
    format."""
    chosen = formatter(log_format)
    changed = 0
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == prefix or name.startswith(prefix + ".")):
            for handler in logger.handlers:
                handler.setFormatter(chosen)
                changed += 1
    return changed
