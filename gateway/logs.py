"""Keys never reach a log: the server's access log shows a /v1/ query string with its values hidden,
and an upstream's error message is logged (and stored on the account) with the account's
credentials hidden (`hide_credentials`).

A request that carries a key in its URL is refused (400), but the ASGI server logs the request
line before the gateway sees it. This filter rewrites uvicorn's access-log record, whose third
argument is the path with its query string, so `?key=sk-…` is logged as `?key=[hidden]`.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode

ACCESS_LOGGER = "uvicorn.access"


def redact_query(path: str) -> str:
    path_only, separator, query = path.partition("?")
    if not separator:
        return path
    names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    return path_only + "?" + urlencode([(name, "[hidden]") for name in names], safe="[]")


class RedactQueryStrings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            if not args[2].startswith("/v1"):
                return True
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


_FILTER = RedactQueryStrings()

# Credential fields that are not secret (and would hide too much of a message if hidden).
NOT_SECRET = frozenset({"base_url", "aws_region", "auth_mode", "region", "project_id"})
HIDDEN = "[hidden]"


def hide_credentials(text: str, credentials: dict) -> str:
    """`text` (an upstream's error message, which may quote the key it was sent) with every
    credential value of the account replaced by [hidden], before it is logged or stored."""
    for name, value in credentials.items():
        if name not in NOT_SECRET and isinstance(value, str) and len(value) >= 8 and value in text:
            text = text.replace(value, HIDDEN)
    return text


def install_access_log_redaction() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
