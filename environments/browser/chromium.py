"""Which Chromium runs, and with which flags."""

from __future__ import annotations

import os
import shutil

from tapeagents.errors import UsageError

__all__ = ["CHROMIUM_FLAGS", "find_chromium"]

CHROMIUM_FLAGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--no-pings",
    "--dns-prefetch-disable",
    # WebRTC: no UDP, and TCP only through the proxy (builds differ on which spelling they read)
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
)
"""Chromium flags: headless-friendly, nothing phones home, WebRTC only through the proxy.

No `--disable-features`: Chromium keeps only the last one given, and Playwright passes its own
(which turns off HTTPS upgrades and the redirect handling its routing relies on).
"""


def find_chromium(path: str | None = None) -> str:
    """The Chromium executable: `path`, `$TAPEAGENTS_CHROMIUM`, or the system's chromium.

    Raises:
        UsageError: when none is found (the message says how to install one).
    """
    candidates = [path, os.environ.get("TAPEAGENTS_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(name) for name in ("chromium", "chromium-browser")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    if path or os.environ.get("TAPEAGENTS_CHROMIUM"):
        raise UsageError(f"Chromium not found at {path or os.environ['TAPEAGENTS_CHROMIUM']!r}.")
    raise UsageError(
        "Chromium was not found. Install the system's package (Debian/Ubuntu: "
        "`apt-get install chromium`) or set TAPEAGENTS_CHROMIUM to the executable's path."
    )
