"""Baton as a team's chat-ops bot, from an attacker's or a careless user's point of view."""

from __future__ import annotations

import httpx

from tests.support import ON_SQLITE_ONLY, BatonProcess, runs_in, wait_for

pytestmark = ON_SQLITE_ONLY  # origins, framing, addresses: HTTP's, whatever the database

REQUEST = {"channel": "general", "user": "alice", "text": "@baton run uptime"}


def test_another_site_cannot_drive_the_playground_through_dns_rebinding(baton: BatonProcess, counter) -> None:
    """A web page on another site whose name its DNS then points at 127.0.0.1 (DNS rebinding) is, for
    the browser, the same origin as the playground: it read every channel and posted and clicked as
    anyone, running the runbooks of baton.yaml, from any page a user of the playground visited. Only
    the addresses the playground is reached by (localhost, an IP, BATON_PUBLIC_URL) are answered."""
    rebound = {"Host": f"attacker.example:{baton.port}"}
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        assert http.get("/api/channels", headers=rebound).status_code == 403
        assert http.get("/api/channels/general/messages", headers=rebound).status_code == 403
        posted = http.post("/api/messages", json=REQUEST, headers={**rebound, "Origin": f"http://{rebound['Host']}"})
        assert posted.status_code == 403 and "BATON_PUBLIC_URL" in posted.json()["detail"]
        assert http.get("/api/channels", headers={"Host": "[attacker"}).status_code == 403  # not a 500
        assert http.post("/api/messages", json=REQUEST, headers={"Origin": "http://[attacker"}).status_code == 403
        # as the page itself reaches it
        for host in (f"127.0.0.1:{baton.port}", f"localhost:{baton.port}", "localhost"):
            assert http.get("/api/channels", headers={"Host": host}).status_code == 200, host
        asked = http.post("/api/messages", json=REQUEST, headers={"Origin": baton.url})
        assert asked.status_code == 201
    baton.client().wait_reply(asked.json()["thread_id"], "did uptime")
    assert runs_in(counter) == ["uptime"]  # the refused post ran nothing


def test_a_post_from_another_origin_is_refused(baton: BatonProcess, counter) -> None:
    """What a page on another origin sends (its Origin header) is refused, whatever its body's type."""
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{baton.port + 1}"):
            refused = http.post("/api/messages", json=REQUEST, headers={"Origin": origin})
            assert refused.status_code == 403, origin
            assert "another site" in refused.json()["detail"]
        messages = http.get("/api/channels/general/messages").json()["messages"]
    assert messages == [] and runs_in(counter) == []


def test_a_playground_listening_beyond_this_machine_says_anyone_there_can_act_as_anyone(start_baton,
                                                                                          database_url: str) -> None:
    """BATON_HOST=0.0.0.0 (a container, a demo on the LAN) served the playground, which trusts the
    name it is given, to the whole network without a word: anyone who can reach the port may post and
    approve as any user. Baton now says so at start."""
    exposed = start_baton(database_url, env={"BATON_HOST": "0.0.0.0"})
    warning = wait_for(lambda: next((line for line in exposed.log.read_text().splitlines()
                                     if "0.0.0.0" in line and "WARNING" in line), None), 10, "the warning")
    assert "any user" in warning and "approve" in warning


def test_another_site_cannot_frame_the_playground_to_steal_a_click(baton: BatonProcess) -> None:
    """Any page could show the playground in an invisible frame over a button of its own (clickjacking):
    the person's click landed on Approve, as the user their page had picked. The page may not be framed."""
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        page = http.get("/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy


def test_the_playground_behind_a_proxy_answers_as_its_public_address(start_baton, database_url: str) -> None:
    proxied = start_baton(database_url, env={"BATON_PUBLIC_URL": "https://baton.example.com"})
    public = {"Host": "baton.example.com", "Origin": "https://baton.example.com"}
    with httpx.Client(base_url=proxied.url, timeout=15) as http:
        assert http.get("/api/channels", headers=public).status_code == 200
        assert http.post("/api/messages", json=REQUEST, headers=public).status_code == 201
        # a proxy that passes its own Host (127.0.0.1:8000) and the page's Origin
        assert http.post("/api/messages", json=REQUEST, headers={"Origin": public["Origin"]}).status_code == 201
