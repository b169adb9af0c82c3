"""The log formats (LM_LOG_FORMAT): one JSON object per line with the current request's id, and the plain
line; what the services' own processes write is tested with them (tests/gateway/test_gateway_process.py,
tests/serving/test_model_server.py)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from learning_machine.logs import REQUEST_ID, JsonFormatter, TextFormatter, formatter, reformat


def _logger(name: str, fmt: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(fmt)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_a_json_line_carries_the_request_id_the_traceback_and_extra_fields():
    logger, stream = _logger("lm-test.json", JsonFormatter())
    token = REQUEST_ID.set("req-42")
    try:
        logger.info("stored %d rows", 3, extra={"rows": 3})
        try:
            raise ValueError("bad value\nsecond line")
        except ValueError:
            logger.exception("failed")
    finally:
        REQUEST_ID.reset(token)
    logger.warning("outside a request")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "stored 3 rows" and first["request_id"] == "req-42" and first["rows"] == 3
    assert first["level"] == "INFO" and first["logger"] == "lm-test.json" and first["time"].endswith("Z")
    assert second["request_id"] == "req-42" and "ValueError: bad value" in second["exc_info"]
    assert "Traceback" in second["exc_info"]  # the traceback stays inside the one line's JSON string
    assert third["request_id"] is None and "exc_info" not in third


def test_the_text_line_names_the_request_unless_the_message_does():
    logger, stream = _logger("lm-test.text", TextFormatter())
    token = REQUEST_ID.set("req-7")
    try:
        logger.info("answered")
        logger.info("answered (request req-7)")
    finally:
        REQUEST_ID.reset(token)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("INFO lm-test.text: answered [request req-7]")
    assert lines[1].endswith("answered (request req-7)")
    with pytest.raises(ValueError, match="valid: text, json"):
        formatter("xml")


def test_a_librarys_own_handlers_get_the_json_format():
    """Streamlit's loggers have handlers of their own and do not propagate to the root logger."""
    logger, stream = _logger("lm-test-lib.server", logging.Formatter("%(message)s"))
    assert reformat("lm-test-lib", "json") == 1
    logger.info("Uvicorn running")
    assert json.loads(stream.getvalue())["message"] == "Uvicorn running"
