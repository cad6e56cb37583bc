"""Render a run's report.html to a PNG with headless Chromium (a visual check of the offline page).

    python bench/render_report.py outputs/runs/<date>/<time>-<name>/report/report.html report.png

Needs a `chromium` (or `google-chrome`) binary; the page loads nothing from the network.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args()
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        print("error: no chromium / google-chrome binary on PATH (apt-get install chromium)", file=sys.stderr)
        return 1
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={args.width},{args.height}",
        f"--screenshot={args.png.resolve()}",
        args.html.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"{args.png} ({args.png.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
