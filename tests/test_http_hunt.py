"""Baton's HTTP surface under bad input: every refusal a 4xx with its reason, never a 500 or a traceback."""

from __future__ import annotations

import httpx

from tests.support import BatonProcess


def test_the_page_cannot_be_framed_at_any_address_it_is_served_from(baton: BatonProcess) -> None:
    """The page is also a static file (/static/index.html, a whole working playground: its script and style
    are loaded by absolute path), and there it came without X-Frame-Options or a Content-Security-Policy:
    another site could frame it and turn a click on its own button into Approve, as on '/' before."""
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for path in ("/", "/static/index.html"):
            for method in ("GET", "HEAD"):
                page = http.request(method, path)
                assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
                assert page.headers.get("x-frame-options") == "DENY", (method, path)
                assert "frame-ancestors 'none'" in page.headers.get("content-security-policy", ""), (method, path)
        script = http.get("/static/app.js")  # the page's own files still load, asked again at every load
        assert script.status_code == 200 and script.headers["cache-control"] == "no-cache"


def test_metrics_asked_for_a_version_it_cannot_read_answer_in_the_text_format(start_baton, sqlite_url: str) -> None:
    """An Accept header whose format version is no number (``version=abc``) was a 500 with a traceback, for
    GET and HEAD: it is now read as a format Baton does not know, which gets the classic text format."""
    baton = start_baton(sqlite_url)
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for accept in ("application/openmetrics-text; version=abc", "text/plain; version=1.x",
                       "application/openmetrics-text; version=" + "9" * 5000):
            for method in ("GET", "HEAD"):
                answer = http.request(method, "/metrics", headers={"Accept": accept})
                assert answer.status_code == 200, (accept[:60], method, answer.text[:200])
                assert answer.headers["content-type"].startswith("text/plain; version=0.0.4"), (accept[:60], method)
            assert "baton_up 1.0" in http.get("/metrics", headers={"Accept": accept}).text
        # what Prometheus sends is answered as before
        scraped = http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert scraped.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert "Traceback" not in baton.log.read_text()
