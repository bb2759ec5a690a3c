"""Structured logs: one JSON object a line, with whatever `extra=` carried."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from core.clock import isoformat, utcnow

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": isoformat(utcnow()),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    from core.settings import get_settings

    settings = get_settings()
    handler = logging.StreamHandler(sys.stderr)
    use_json = settings.log_json if json_lines is None else json_lines
    handler.setFormatter(JsonFormatter() if use_json else logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
