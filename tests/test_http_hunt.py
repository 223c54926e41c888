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
