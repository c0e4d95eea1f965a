"""What a saved or displayed URL may show: scheme, host, port and path, never credentials.

One rule for every document and every screen: userinfo (`user:key@`) and the query
string (`?api_key=...`) and fragment are dropped, because gateways put keys in both.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """`https://user:key@host:8443/v1?key=x#f` -> `https://host:8443/v1`; text that is not a URL comes back as is."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    if not parts.scheme or not parts.hostname:
        return url
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
