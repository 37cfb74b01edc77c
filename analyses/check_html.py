"""Open a page in headless Chromium with the network cut off, and screenshot it: the check that a run's
``report.html`` and attention view are self-contained.

    .venv/bin/python analyses/check_html.py runs/easy/report.html --out analyses/report_html_check.png \
        --height 6000
    .venv/bin/python analyses/check_html.py runs/easy/analysis/attention.html \
        --out analyses/attention_view_check.png

Chromium is Debian's (``apt-get install chromium``). Every request is sent to a dead proxy, so the page
renders only if it is self-contained (``cca_tl.analysis.save_html`` writes circuitsvis' ``local_src``, the
report inlines its plots and that view); a page built from ``str(view)`` loads its JavaScript from a CDN
and renders blank here. Prints the PNG's size and the fraction of non-white pixels (a blank page is ~0).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path


def screenshot(page: Path, out: Path, *, width: int = 1100, height: int = 900) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("No Chromium found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                        f"--window-size={width},{height}", "--virtual-time-budget=8000",
                        f"--screenshot={out}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)


def ink(png: Path) -> float:
    """Fraction of pixels that are not (near) white."""
    import matplotlib.image as mpimg

    img = mpimg.imread(str(png))[..., :3]
    return float((img.min(axis=-1) < 0.95).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("page", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("attention_view_check.png"))
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=900, help="window height: the screenshot's height")
    args = parser.parse_args()
    screenshot(args.page, args.out, width=args.width, height=args.height)
    print(f"{args.out}: {args.out.stat().st_size:,} bytes, non-white pixels {100 * ink(args.out):.1f} %")


if __name__ == "__main__":
    main()
