"""Render a sweep report in headless Chromium and save a PNG screenshot.

    python scripts/screenshot_report.py results/mnist_grid            # builds the report first
    python scripts/screenshot_report.py results/mnist_grid/report.html --out shot.png --window 1400,6000

Why: the report must open offline in a real browser, and a screenshot is how to check that without a display
(CI, a remote box). Needs Debian's `chromium` (apt-get install -y chromium) or any Chromium/Chrome on PATH or in
$CHROMIUM. Every network feature is switched off, so a page that needed the network would show it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    """$CHROMIUM if set, else the first Chromium-like browser on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def screenshot(page: str | os.PathLike, out: str | os.PathLike, window: tuple[int, int] = (1400, 3000),
               chromium: str | None = None, timeout: float = 120.0) -> Path:
    """Screenshot an HTML file (file:// URL) to a PNG. Raises RuntimeError when Chromium fails or writes nothing."""
    browser = chromium or find_chromium()
    if browser is None:
        raise RuntimeError("no Chromium found: apt-get install -y chromium, or set $CHROMIUM to the browser")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="pixelreg-chromium-") as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
                   f"--window-size={window[0]},{window[1]}", url]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"chromium exit {proc.returncode}, no screenshot: " + " | ".join(tail))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="a report .html file, or a sweep folder (its report is built first)")
    parser.add_argument("--out", default=None, help="PNG to write (default: next to the report, .png)")
    parser.add_argument("--window", default="1400,3000", help="WIDTH,HEIGHT in pixels (default 1400,3000)")
    parser.add_argument("--chromium", default=None, help="browser executable (default: $CHROMIUM or PATH)")
    args = parser.parse_args(argv)
    target = Path(args.target)
    if target.is_dir():
        from orchestrator.analysis.report import build_report

        target = Path(build_report(target))
    if not target.is_file():
        print(f"error: {target}: no such report file or sweep folder", file=sys.stderr)
        return 2
    try:
        width, height = (int(v) for v in args.window.split(","))
    except ValueError:
        print(f"error: --window {args.window!r}: write WIDTH,HEIGHT, e.g. 1400,3000", file=sys.stderr)
        return 2
    try:
        png = screenshot(target, args.out or target.with_suffix(".png"), (width, height), args.chromium)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
