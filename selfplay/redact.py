"""Passwords out of everything shown or stored: URLs with their password masked, configs with
every such URL masked. The API key never reaches a config (it is read from the environment)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:  # not a URL after all (e.g. a bad port): nothing to mask in it
        return None


def mask_url(url: str) -> str:
    """`url` with its password replaced by `***` (`redis://u:***@host/0`); unchanged without one."""
    if "://" not in url or _password(url) is None:
        return url
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def mask_text(text: str, *urls: str) -> str:
    """`text` with the password of each of `urls` masked wherever it appears (a driver's error
    message may quote the connection string, or the password alone)."""
    for url in urls:
        password = _password(url) if "://" in url else None
        if password:
            text = text.replace(url, mask_url(url))
            for form in {password, unquote(password)}:
                if len(form) >= 4:  # a shorter one would mask unrelated text
                    text = text.replace(form, MASK)
    return text


# Sections whose URLs no process reads back from the stored config (the driver and every
# worker take the store and the broker from their own config or command line).
MASKED_SECTIONS = ("store", "executor")


def mask_config(config: dict[str, Any]) -> dict[str, Any]:
    """A dumped config with the passwords of its store and broker URLs masked, as it is stored
    on the run (`runs.config`) and shown by `db show` and the dashboard."""
    out = dict(config)
    for section in MASKED_SECTIONS:
        if isinstance(out.get(section), dict):
            out[section] = {
                k: mask_url(v) if isinstance(v, str) else v for k, v in out[section].items()
            }
    return out


def mask_urls(value: Any) -> Any:
    """`value` (a dumped config or any part of it) with the password of every URL in it masked,
    at any depth: what leaves the store (an experiment tracker) shows no password at all."""
    if isinstance(value, dict):
        return {k: mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_urls(v) for v in value]
    return mask_url(value) if isinstance(value, str) else value
