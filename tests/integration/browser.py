"""Debian's Chromium for the browser tests (browser downloads are impossible here)."""

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# Headless, and without the background traffic a closed network refuses.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"
)
