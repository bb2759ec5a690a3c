"""Log lines carry what the call passed as fields: JSON in a deployment, key=value at a terminal."""

from __future__ import annotations

import json
import logging

from core.logs import JsonFormatter, PlainFormatter


def a_record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("workers.base", logging.INFO, __file__, 1, "step ran", None, None)
    record.__dict__.update(fields)
    return record


def test_a_terminal_line_shows_the_fields_after_the_message() -> None:
    line = PlainFormatter().format(a_record(task="scan", submission_id=12, outcome="succeeded", seconds=0.041))
    assert line == "INFO workers.base step ran task=scan submission_id=12 outcome=succeeded seconds=0.041"
    assert PlainFormatter().format(a_record()) == "INFO workers.base step ran"


def test_a_json_line_has_the_fields_and_not_uvicorns_coloured_copy_of_the_message() -> None:
    entry = json.loads(JsonFormatter().format(a_record(task="scan", color_message="\x1b[36mstep ran\x1b[0m")))
    assert (entry["msg"], entry["task"], entry["level"]) == ("step ran", "scan", "info")
    assert "color_message" not in entry
