"""Masking credentials in URLs before they are printed, logged or served.

``mask_url("rtsp://admin:hunter2@cam/stream")`` -> ``"rtsp://admin:***@cam/stream"``. Query
parameters that commonly carry secrets (``password``, ``token``, ...) are masked too. Strings that
are not URLs come back unchanged.
"""

from __future__ import annotations

import re

MASK = "***"

_SECRET_KEYS = ("password", "passwd", "pass", "pwd", "token", "access_token", "auth", "key",
                "apikey", "api_key", "secret", "signature", "sig")
_KEYS_ALT = "|".join(re.escape(k) for k in _SECRET_KEYS)
_QUERY_RE = re.compile(r"(?i)([?&;](?:" + _KEYS_ALT + r")=)[^&;#\s]*")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def mask_url(url: str) -> str:
    """Return ``url`` with the password of its user-info and secret query values replaced by ``***``.

    A user name alone (no password) is kept: it helps tell cameras apart and is not a secret.
    """
    if not isinstance(url, str) or not url:
        return url
    out = url
    m = _SCHEME_RE.match(out)
    if m:
        start = m.end()
        ends = [i for i in (out.find(c, start) for c in "/?#") if i >= 0]
        end = min(ends) if ends else len(out)
        authority = out[start:end]
        if "@" not in authority:
            # a password with an unescaped '/', '?' or '#' ends the authority early: when an '@'
            # follows with a ':' before it, mask up to that '@' (over-masking beats a leak)
            q_ends = [i for i in (out.find(c, start) for c in "?#") if i >= 0]
            at = out.rfind("@", start, min(q_ends) if q_ends else len(out))
            if at > 0 and ":" in out[start:at]:
                end = out.find("/", at)
                end = end if end >= 0 else (min(q_ends) if q_ends else len(out))
                authority = out[start:end]
        if "@" in authority:
            userinfo, _, host = authority.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            masked = f"{user}:{MASK}" if sep else user
            out = f"{out[:start]}{masked}@{host}{out[end:]}"
    return _QUERY_RE.sub(lambda q: q.group(1) + MASK, out)


def mask_text(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Mask every URL's credentials found in free text (e.g. an FFmpeg error line) and any of
    ``secrets`` appearing literally."""
    if not text:
        return text
    out = re.sub(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+", lambda m: mask_url(m.group(0)), text)
    for secret in secrets:
        if secret:
            out = out.replace(secret, MASK)
    return out
