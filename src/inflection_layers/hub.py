"""Whether the Hugging Face hub can be reached, asked once, quickly, before a library would retry for minutes."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def offline_flag() -> str | None:
    """The name of a set Hugging Face offline variable (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``), else None."""
    on = ("1", "ON", "YES", "TRUE")
    return next(
        (n for n in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(n, "").strip().upper() in on), None
    )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (an offline variable set, or no TCP connection in `timeout` s), else None."""
    if name := offline_flag():
        return f"{name} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f"no connection to {host}:443 within {timeout:g} s ({type(e).__name__})"
    return None
