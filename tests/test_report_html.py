"""The HTML report: one self-contained page whose charts render offline."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from proxy import report

SMALL = Path(__file__).parent / "fixtures" / "report" / "small"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    pytest.importorskip("plotly")
    out = tmp_path_factory.mktemp("html") / "report.html"
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    assert report.run(parser.parse_args([str(SMALL), "--format", "html", "-o", str(out)])) == 0
    return out


def _markup(html: str) -> str:
    """The page without the bodies of inline scripts (plotly.js mentions URLs in its code)."""
    return re.sub(r"(<script\b[^>]*>).*?(</script>)", r"\1\2", html, flags=re.S | re.I)


def test_html_loads_no_external_resources(page):
    markup = _markup(page.read_text(encoding="utf-8"))
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", markup, re.I), "a script is loaded from elsewhere"
    assert not re.search(r"<link\b[^>]*\bhref\s*=", markup, re.I), "a stylesheet or font is linked"
    assert not re.search(r"<(img|iframe|embed|object|source|video|audio)\b[^>]*\b(src|data)\s*=", markup, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(?!data:)", markup, re.I), "CSS loads a resource"
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup, re.I)


def test_html_embeds_plotly_once_and_has_every_chart(page):
    html = page.read_text(encoding="utf-8")
    assert html.count("Plotly.newPlot(") == 2 + 3 + 2  # timelines, confusion heat maps, latency
    assert len(re.findall(r"<script\b[^>]*>", html)) - html.count("Plotly.newPlot(") == 1
    for text in ("Agreement over time", "Confusion matrices", "Latency", "Transitions", "investigating"):
        assert text in html


def test_html_tables_are_well_formed(page):
    html = page.read_text(encoding="utf-8")
    tags = re.findall(r"<table\b[^>]*>", html)
    assert tags and all(t in ("<table>", '<table class="text">') for t in tags)
    assert html.count("<table") == html.count("</table>")
    assert '<tr class="total">' not in html  # no --by: every row is a route x stage total already


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_html_charts_render_offline_in_headless_chromium(page, tmp_path):
    # --dump-dom prints the DOM after scripts ran: plotly draws each chart as an SVG "main-svg"
    dom = subprocess.run(
        [CHROMIUM, *HEADLESS, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=60
    ).stdout
    assert dom.count('class="main-svg"') >= 7
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *HEADLESS, f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri()],
        capture_output=True,
        timeout=60,
    )
    assert shot.stat().st_size > 50_000  # a blank page is a few kB
