"""Log lines that say which request they are about, readable or as JSON (README "Logging").

The gateway sets `request_id` (a context variable) when a request starts; `RequestIdFilter` copies
it onto every log record made while that request is handled: in its own task, in the recordings
it starts (asyncio tasks copy the context) and on the database threads it hands work to. Two
formatters read it:

- `PlainFormatter` (the default): `time LEVEL logger message`, then ` request_id=req_…` when the
  line is about a request;
- `JsonFormatter` (`LOG_FORMAT=json`): one JSON object per line with `time`, `level`, `logger`,
  `message`, `request_id` when there is one, and `exception` with the traceback.

No secret goes into a log message: keys and credentials are never formatted into one
(tests/gateway/test_logging.py greps a whole DEBUG-level gateway run for every one it used).
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime

request_id: ContextVar[str] = ContextVar("request_id", default="")

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on the record (`""` outside a request); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        return True


class PlainFormatter(logging.Formatter):
    def __init__(
        self, fmt: str | None = None, datefmt: str | None = None, style: str = "%", **kwargs
    ) -> None:
        super().__init__(fmt or PLAIN_FORMAT, datefmt, style, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        current = getattr(record, "request_id", "")
        if current and current not in record.getMessage():
            head, newline, rest = line.partition("\n")
            line = f"{head} request_id={current}{newline}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = getattr(record, "request_id", "")
        if current:
            entry["request_id"] = current
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else PlainFormatter()


SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def adopt_server_loggers(log_format: str, names: tuple[str, ...] = SERVER_LOGGERS) -> None:
    """The ASGI server configures its own loggers before Django's LOGGING; with JSON logs their
    handlers get the JSON formatter and the request id too. A logger the server left without
    handlers (`--no-access-log`) stays silent."""
    if log_format != "json":
        return
    for name in names:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JsonFormatter())
            if not any(isinstance(existing, RequestIdFilter) for existing in handler.filters):
                handler.addFilter(RequestIdFilter())
