"""Secrets in URLs (a database's password, tokens in its query): hidden wherever a URL is shown."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

#: Query parameters of a URL whose values are secrets (libpq's sslpassword, tokens, keys).
SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with every secret part as ``***``: the password of ``user:password@host`` (found
    by parsing, so an unencoded '@' or '/' in it is still all hidden) and the value of each
    query parameter named like a secret. Text without ``://`` is returned as it is."""
    return _split_secrets(url)[0]


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url`` that :func:`redact_url` hides, longest first (to scrub them
    from messages that quote them, e.g. a database driver's)."""
    return sorted(_split_secrets(url)[1], key=len, reverse=True)


def with_encoded_password(url: str) -> str:
    """``url`` with the characters of its password that end a URL's parts ('@', '/', '?', '#',
    ':') percent-encoded: a database driver would otherwise split ``user:T@pw@host`` at the
    first '@' (and quote the rest of the password as a host name)."""
    scheme, sep, rest = url.partition("://")
    userinfo = _userinfo(rest) if sep else None
    if userinfo is None:
        return url
    user, colon, password, after = userinfo
    encoded = "".join(quote(c, safe="") if c in "@/?#:" else c for c in password)
    return f"{scheme}://{user}{colon}{encoded}{after}"


def _userinfo(rest: str) -> tuple[str, str, str, str] | None:
    """``user``, ``:``, ``password`` and the rest from ``@host`` on, of a URL after its
    ``scheme://``; None without '@'. The user part ends at the last '@' before the query (a
    password may hold '@' and '/'; a database path hardly ever holds '@')."""
    ends = [i for i in (rest.find(c) for c in "?#") if i >= 0]
    last_at = rest.rfind("@", 0, min(ends, default=len(rest)))
    if last_at < 0:
        last_at = rest.rfind("@")  # a '?' or '#' in the password itself
    if last_at < 0:
        return None
    user, colon, password = rest[:last_at].partition(":")
    return user, colon, password, rest[last_at:]


def _split_secrets(url: str) -> tuple[str, list[str]]:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, []
    secrets = []
    userinfo = _userinfo(rest)
    if userinfo is not None:
        user, colon, password, after = userinfo
        secrets.append(password)
        rest = f"{user}{':***' if colon else ''}{after}"
    base, question, query = rest.partition("?")
    if question:
        parts = []
        for item in query.split("&"):
            key, equals, value = item.partition("=")
            if equals and SECRET_PARAMETER.search(key):
                secrets.append(value)
                item = f"{key}=***"
            parts.append(item)
        rest = f"{base}?{'&'.join(parts)}"
    return f"{scheme}://{rest}", [s for s in secrets if s]


def redacted(value: Any) -> Any:
    """``value`` with :func:`redact_url` applied to every string in it (lists, mappings)."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, list | tuple):
        return type(value)(redacted(v) for v in value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    return value
