"""Structured logs: one JSON object a line, with whatever `extra=` carried."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from core.clock import isoformat, utcnow

# A record's own attributes, and uvicorn's copy of its message with terminal colours: not fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the call's ``extra=`` carried."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": isoformat(utcnow()),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PlainFormatter(logging.Formatter):
    """One line for a person at a terminal (``make run``): level, logger, message, then the fields."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        line = super().formatMessage(record)
        return f"{line} {' '.join(f'{k}={v}' for k, v in fields.items())}" if fields else line


def configure_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    from core.settings import get_settings

    settings = get_settings()
    handler = logging.StreamHandler(sys.stderr)
    use_json = settings.log_json if json_lines is None else json_lines
    handler.setFormatter(JsonFormatter() if use_json else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
