"""Open the built documentation from disk (file://) in a headless Chromium and check that it works offline:
search returns hits and the equations render; writes screenshots of both.

    python scripts/check_docs_offline.py --site site --out outputs/docs_offline

Needs a built site (`make docs`) and Chromium (Debian: `apt-get install chromium`; or `--browser PATH`). The
browser runs with networking disabled (a proxy that does not exist), so a page that needed a remote asset
would show it. Writes search.png, mathematics.png and report.md into `--out`; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_NETWORK = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def chromium(browser: str, url: str, *extra: str) -> str:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        "--virtual-time-budget=10000",
        *NO_NETWORK,
        *extra,
        url,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed: {run.stderr[-2000:]}")
    return run.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", default="site", help="the built site (make docs)")
    parser.add_argument("--out", default="outputs/docs_offline")
    parser.add_argument("--query", default="leapfrog", help="a word the search must find")
    parser.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "")
    args = parser.parse_args(argv)
    print("$", shlex.join(["python", "scripts/check_docs_offline.py", *(argv if argv is not None else sys.argv[1:])]))
    site, out = Path(args.site).resolve(), Path(args.out)
    if not (site / "index.html").exists():
        parser.error(f"{site} has no index.html: build the site first (make docs)")
    if not args.browser:
        parser.error("no Chromium found: apt-get install chromium, or pass --browser")
    out.mkdir(parents=True, exist_ok=True)

    search_url = f"{(site / 'index.html').as_uri()}?q={args.query}"
    dom = chromium(args.browser, search_url, "--dump-dom")
    meta = re.search(r'md-search-result__meta">([^<]*)<', dom)
    hits = len(re.findall(r'class="md-search-result__item"', dom))
    chromium(args.browser, search_url, f"--screenshot={(out / 'search.png').resolve()}")

    maths_url = (site / "mathematics.html").as_uri()
    maths_dom = chromium(args.browser, maths_url, "--dump-dom")
    equations = len(re.findall(r"<math\b", maths_dom))
    raw_tex = "\\frac" in re.sub(r"<annotation.*?</annotation>", "", maths_dom, flags=re.S)
    chromium(args.browser, maths_url, f"--screenshot={(out / 'mathematics.png').resolve()}")

    checks = [
        (
            f"search for '{args.query}' from file:// lists results",
            hits > 0,
            meta.group(1) if meta else "no result list",
        ),
        ("the mathematics page has rendered equations (MathML)", equations > 0, f"{equations} <math> elements"),
        ("no raw TeX left on the mathematics page", not raw_tex, "raw \\frac found" if raw_tex else "none"),
    ]
    lines = ["| check | passed | seen |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'NO'} | {seen} |" for name, ok, seen in checks]
    report = "\n".join(lines) + "\n\nScreenshots: search.png, mathematics.png (networking disabled in the browser).\n"
    (out / "report.md").write_text(report)
    print(report)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
