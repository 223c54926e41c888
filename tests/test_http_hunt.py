"""Baton's HTTP surface under bad input: every refusal a 4xx with its reason, never a 500 or a traceback."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support import ON_SQLITE_ONLY, BatonProcess, runs_in

REQUEST = {"channel": "general", "user": "alice", "text": "@baton run uptime"}
CHAT = {"channel": "general", "user": "alice", "text": "deploy went fine"}


@ON_SQLITE_ONLY
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


@pytest.mark.parametrize(("route", "body", "unknown"), [
    ("/api/messages", {**REQUEST, "eventId": "retry-1"}, "eventId"),  # the redelivery guard, misspelled
    ("/api/messages", {**REQUEST, "thread": "1"}, "thread"),  # a reply meant for a thread
    ("/api/clicks", {"message_id": 1, "approval_id": "a", "action": "approve", "user": "bob", "event": "x"}, "event"),
])
@ON_SQLITE_ONLY
def test_a_field_the_api_does_not_know_is_refused_naming_it(baton: BatonProcess, counter, route: str,
                                                             body: dict[str, object], unknown: str) -> None:
    """A field the API does not take was dropped without a word: a client that wrote ``eventId`` for
    ``event_id`` lost the redelivery guard (its retry ran the runbook again), and one that wrote ``thread``
    for ``thread_id`` posted its reply as a new request at the top of the channel."""
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for _ in range(2):  # a client retrying a post it thinks was lost
            refused = http.post(route, json=body)
            assert refused.status_code == 422, refused.text[:300]
            assert [error["loc"] for error in refused.json()["detail"]] == [["body", unknown]]
            assert "retry-1" not in refused.text  # the input is not echoed back
        assert http.get("/api/channels/general/messages").json()["messages"] == []  # nothing was stored
        # the fields the API names are taken as before
        asked = http.post("/api/messages", json={**REQUEST, "event_id": "retry-1"})
        assert asked.status_code == 201 and asked.json()["delivery"] == "accepted"
    baton.client().wait_reply(asked.json()["thread_id"], "did uptime")
    assert runs_in(counter) == ["uptime"]  # the refused posts ran nothing


@ON_SQLITE_ONLY
def test_a_message_cannot_take_an_event_id_that_names_a_click(baton: BatonProcess, counter) -> None:
    """A click's event id is stored as 'click:<id>' beside the messages' own: a message posted with
    event_id 'click:<that id>', never seen as a message, was answered 'duplicate' and never reached the bot."""
    pg = baton.client()
    thread = pg.ask("@baton run restart service=web")
    assert pg.click(pg.wait_card(thread), "bob", event_id="k1").json()["delivery"] == "accepted"
    pg.wait_reply(thread, "did restart web")
    refused = pg.say("@baton run uptime", event_id="click:k1")
    assert refused.status_code == 422, refused.text
    assert [error["loc"] for error in refused.json()["detail"]] == [["body", "event_id"]]
    assert "names clicks" in refused.json()["detail"][0]["msg"]
    asked = pg.say("@baton run uptime", event_id="k1")  # the click's own id, as a message's: a message of its own
    assert asked.status_code == 201 and asked.json()["delivery"] == "accepted"
    pg.wait_reply(asked.json()["thread_id"], "did uptime")
    assert runs_in(counter) == ["restart web", "uptime"]


@ON_SQLITE_ONLY
def test_a_body_of_many_unknown_fields_gets_a_short_answer_that_does_not_echo_them(baton: BatonProcess) -> None:
    """Each unknown field is an error of its own: a 930 kB body of 100,000 of them got an 8.8 MB 422 (ten
    times what was sent), and an unknown field's name of 900 kB was sent back whole in its ``loc``."""
    start = '{"channel":"general","user":"alice","text":"hi",'
    many = (start + ",".join(f'"{n:x}":0' for n in range(100_000)) + "}").encode()
    long_name = (start + '"' + "k" * 900_000 + '": 0}').encode()
    with httpx.Client(base_url=baton.url, timeout=30) as http:
        for body in (many, long_name):
            refused = http.post("/api/messages", content=body, headers={"content-type": "application/json"})
            assert refused.status_code == 422 and len(refused.content) < 5_000, (refused.status_code, len(refused.content))
            assert all(error["loc"][0] == "body" for error in refused.json()["detail"])
        detail = http.post("/api/messages", content=many, headers={"content-type": "application/json"}).json()["detail"]
        assert "99,990 more" in detail[-1]["msg"]  # the first ten are named, and how many more there are
        assert http.get("/api/channels/general/messages").json()["messages"] == []


@ON_SQLITE_ONLY
def test_a_body_that_cannot_be_read_as_json_is_refused_saying_why(baton: BatonProcess) -> None:
    """JSON's syntax is answered with where it breaks; a body that is not UTF-8 (text in Latin-1), nested
    too deeply or holding a number too long for Python got a bare 'There was an error parsing the body'."""
    start = b'{"channel": "general", "user": "alice", '
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for body, reason in [(start + b'"text": "caf\xe9 @baton help"}', "not UTF-8"),
                             (start + b'"text": "hi", "thread_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
                             (start + b'"text": "hi", "thread_id": ' + b"7" * 5_000 + b"}", "digits"),
                             # UTF-16 was read, as json.loads reads it (the README says JSON is UTF-8)
                             ((start + b'"text": "@baton help"}').decode().encode("utf-16"), "UTF-16")]:
            refused = http.post("/api/messages", content=body, headers={"content-type": "application/json"})
            assert refused.status_code == 400 and reason in refused.json()["detail"], refused.text[:300]
        broken = http.post("/api/messages", content=start + b'"text": "hi" "thread_id": 1}',
                           headers={"content-type": "application/json"})  # it said only "JSON decode error"
        assert broken.status_code == 422 and broken.json()["detail"][0]["msg"] == (
            "JSON decode error: Expecting ',' delimiter at offset 53 (counted from 0, as its loc)"), broken.text
        # every other refusal keeps its own answer
        assert http.get("/nowhere").json() == {"detail": "Not Found"}
        assert http.delete("/api/messages").status_code == 405
        assert http.get("/api/threads/999/messages").json() == {"detail": "there is no thread '999'"}
        assert http.get("/api/channels/general/messages").json()["messages"] == []
    assert "Traceback" not in baton.log.read_text()


def test_a_metrics_token_beyond_ascii_is_taken_as_the_scraper_sends_it(start_baton, sqlite_url: str) -> None:
    """A BATON_METRICS_TOKEN beyond ASCII was refused with a 401 when sent right: the header's bytes (UTF-8,
    as curl and Prometheus send them) were read as Latin-1 and encoded again as UTF-8 before the comparison."""
    token = "sécret-à"  # its last byte, 0xA0, read as Latin-1 is a no-break space, which str.strip() drops
    baton = start_baton(sqlite_url, env={"BATON_METRICS_TOKEN": token})
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for method in ("GET", "HEAD"):
            sent = http.request(method, "/metrics", headers=[(b"authorization", b"Bearer " + token.encode())])
            assert sent.status_code == 200, method
            for wrong in (b"Bearer " + token.encode("latin-1"), b"Bearer s\xc3\xa9cret-", b"Bearer", b""):
                refused = http.request(method, "/metrics", headers=[(b"authorization", wrong)])
                assert refused.status_code == 401, (method, wrong)
        assert "baton_up 1.0" in http.get("/metrics", headers=[(b"authorization", b"bearer  " + token.encode())]).text


def test_a_public_address_with_an_international_name_is_answered(start_baton, sqlite_url: str) -> None:
    """BATON_PUBLIC_URL=https://bäton.example: browsers send such a name as its ASCII form (Host and Origin
    xn--bton-loa.example), which was never its match: every request was a 403 saying to set BATON_PUBLIC_URL."""
    baton = start_baton(sqlite_url, env={"BATON_PUBLIC_URL": "https://bäton.example"})
    public = {"Host": "xn--bton-loa.example", "Origin": "https://xn--bton-loa.example"}
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        assert http.get("/api/channels", headers=public).status_code == 200
        assert http.post("/api/messages", json=CHAT, headers=public).status_code == 201
        # a proxy that passes its own Host (127.0.0.1:<port>) and the page's Origin
        assert http.post("/api/messages", json=CHAT, headers={"Origin": public["Origin"]}).status_code == 201
        # another name is still refused
        assert http.get("/api/channels", headers={"Host": "xn--bton-0qa.example"}).status_code == 403
        assert http.post("/api/messages", json=CHAT, headers={"Origin": "https://xn--bton-0qa.example"}).status_code == 403


def test_a_public_address_with_capitals_or_its_schemes_port_takes_the_pages_posts(start_baton, sqlite_url: str) -> None:
    """BATON_PUBLIC_URL=https://Baton.Example.com:443/: a browser writes its Origin in lower case and without
    the scheme's own port (https://baton.example.com), which was compared with the address as written: behind
    a proxy passing its own Host, every post and click of the page was a 403 'from another site'."""
    baton = start_baton(sqlite_url, env={"BATON_PUBLIC_URL": "https://Baton.Example.com:443/"})
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        assert http.post("/api/messages", json=CHAT, headers={"Origin": "https://baton.example.com"}).status_code == 201
        assert http.get("/api/channels", headers={"Host": "baton.example.com"}).status_code == 200
        for other in ("https://baton.example.com:8443", "https://baton.example.org"):
            assert http.post("/api/messages", json=CHAT, headers={"Origin": other}).status_code == 403, other


@ON_SQLITE_ONLY
def test_a_body_sent_without_the_json_content_type_is_refused_saying_so(baton: BatonProcess) -> None:
    """``curl -d '{...}'`` without ``-H 'content-type: application/json'`` (sent as a form), or a page's
    ``fetch`` without the header (text/plain): the JSON object was not read, and the 422 said only 'Input
    should be a valid dictionary or object to extract fields from'."""
    body = b'{"channel": "general", "user": "alice", "text": "hi"}'
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for content_type in ("application/x-www-form-urlencoded", "text/plain;charset=UTF-8", "text/json", None):
            headers = {"content-type": content_type} if content_type else {}
            refused = http.post("/api/messages", content=body, headers=headers)
            assert refused.status_code == 422, refused.text
            assert "Content-Type: application/json" in refused.json()["detail"][0]["msg"], content_type
            assert refused.json()["detail"][0]["loc"] == ["body"]
        for not_an_object in (b"[]", b"null", b'"hi"'):
            refused = http.post("/api/clicks", content=not_an_object, headers={"content-type": "application/json"})
            assert refused.status_code == 422 and "a JSON object" in refused.json()["detail"][0]["msg"], refused.text
        assert http.get("/api/channels/general/messages").json()["messages"] == []
        assert http.post("/api/messages", content=body, headers={"content-type": "application/json"}).status_code == 201


@ON_SQLITE_ONLY
def test_a_thread_id_with_many_leading_zeros_is_still_its_thread(baton: BatonProcess) -> None:
    """'0538' is thread 538, but past 15 characters the zeros made it no thread at all (a 404 for
    '00000000000000000001'). Only the number counts: more than 15 digits of it is still no thread."""
    pg = baton.client()
    thread = pg.ask("a question", user="bob")
    padded = thread.zfill(30)
    assert pg.http.get(f"/api/threads/{padded}/messages").json()["root"]["id"] == int(thread)
    reply = pg.say("an answer", thread=padded, user="carol")
    assert reply.status_code == 201 and reply.json()["thread_id"] == thread
    for unknown in ("1" + "0" * 15, "0" * 16, "0", "-1", "1e3", " 1", "+1", "0x1", "\u0661"):
        assert pg.http.get(f"/api/threads/{unknown}/messages").status_code == 404, unknown
        assert pg.say("hi", thread=unknown).status_code == 404, unknown


def test_ids_beyond_what_the_database_holds_are_no_thread_or_message(baton: BatonProcess) -> None:
    """Message ids are PostgreSQL integers (at most 2,147,483,647): a thread id or a click's message_id past
    that (2147483648, up to the 15 digits taken) was a 500 with a traceback there ('integer out of range')."""
    pg = baton.client()
    for thread in ("2147483647", "2147483648", "999999999999999", "0002147483648"):
        assert pg.http.get(f"/api/threads/{thread}/messages").status_code == 404, thread
        assert pg.say("hi", thread=thread).status_code == 404, thread
    click = {"approval_id": "a", "action": "approve", "user": "bob"}
    assert pg.http.post("/api/clicks", json={**click, "message_id": 2_147_483_647}).status_code == 404
    for message_id in (2_147_483_648, 10**15):
        refused = pg.http.post("/api/clicks", json={**click, "message_id": message_id, "event_id": "x"})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "message_id"]
    assert "Traceback" not in baton.log.read_text()


def test_a_message_within_its_limit_is_taken_however_its_json_is_escaped(start_baton, sqlite_url) -> None:
    """Python's json (and requests) escape a character beyond the BMP as a surrogate pair, 12 bytes: 90,000
    emoji, within the 100,000-character limit, were a 1.08 MB body and a 413 ("larger than 1,000,000 bytes")."""
    baton = start_baton(sqlite_url)
    body = json.dumps({"channel": "general", "user": "alice", "text": "\U0001F600" * 100_000})
    answer = baton.client().http.post("/api/messages", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 201, answer.text[:200]


@ON_SQLITE_ONLY
def test_a_message_or_click_as_the_bot_is_refused(baton: BatonProcess) -> None:
    """``{"user": "baton"}`` was posted and shown under the bot's name and avatar (only the APP badge was
    missing): anyone could write as the bot."""
    with httpx.Client(base_url=baton.url, timeout=15) as http:
        for user in ("baton", "Baton"):
            refused = http.post("/api/messages", json={"channel": "general", "user": user, "text": "@baton help"})
            assert refused.status_code == 422 and "the bot's own name" in refused.text, refused.text
            clicked = http.post("/api/clicks", json={"message_id": 1, "approval_id": "x", "action": "approve",
                                                     "user": user})
            assert clicked.status_code == 422 and "the bot's own name" in clicked.text, clicked.text
        assert http.get("/api/channels/general/messages").json()["messages"] == []
