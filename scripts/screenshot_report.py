#!/usr/bin/env python3
"""Screenshot a run's report.html in headless Chromium (the Debian `chromium` package) for the README.

    scripts/screenshot_report.py RUN_DIR_OR_REPORT [--out docs/report.png] [--width 1200] [--height 2000]

RUN_DIR_OR_REPORT is a run directory (its report.html), a report.html, or a report.json (rendered
to HTML first with autoannotator.run.report_html). Chromium runs with a throwaway profile and every
background network feature off; the page itself needs no network. Install the browser with
`apt-get install -y chromium` (as root) if it is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--mute-audio"]


def find_browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: apt-get install -y chromium")


def html_for(source: Path, scratch: Path) -> Path:
    """The HTML file to open: the run's report.html, or one rendered from report.json."""
    if source.is_dir():
        source = source / "report.html" if (source / "report.html").is_file() else source / "report.json"
    if source.suffix == ".json":
        from autoannotator.run.report_html import render_html

        page = scratch / "report.html"
        page.write_text(render_html(json.loads(source.read_text(encoding="utf-8"))), encoding="utf-8")
        return page
    if not source.is_file():
        sys.exit(f"not found: {source}")
    return source


def screenshot(page: Path, out: Path, width: int, height: int, timeout_s: float = 120.0) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aa-chromium-") as profile:
        cmd = [find_browser(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out.resolve()}",
               f"--window-size={width},{height}", page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="run directory, report.html or report.json")
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2000)  # the whole page of a typical run
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aa-report-") as scratch:
        screenshot(html_for(args.source, Path(scratch)), args.out, args.width, args.height)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
