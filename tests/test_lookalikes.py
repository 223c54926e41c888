"""Values that look like others: a runbook argument's ``\\w \\d \\s \\b`` take ASCII only (a Cyrillic "е" in
"wеb", Arabic-Indic digits "٨٠" passed ``^\\w+$`` and ``^\\d+$``), and the plan and the approval card write a
value mixing scripts, or holding a digit other than 0-9, as bash's ``$'...'`` with escapes, so an approver
reads the command that runs."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from bot.config import Argument, ConfigError, load_config
from graphs.runbook import shown_command
from tests.support import BatonProcess, runs_in

ROOT = Path(__file__).resolve().parents[1]
CYRILLIC_E, ARABIC_80 = "\u0435", "\u0668\u0660"  # "е" (U+0435) looks like "e"; "٨٠" is 80
WEB = f"w{CYRILLIC_E}b"


@pytest.mark.parametrize(("pattern", "value"), [
    (r"^\w+$", WEB),
    (r"^\d+$", ARABIC_80),
    (r"^\d+$", "\uff18\uff10"),  # fullwidth ８０
    (r"^[\w.-]+$", "web\u02bc"),  # a modifier letter apostrophe, ʼ
    (r"^\w+$", "v\u00b2"),  # a superscript two
    (r"^\w+\s\w+$", "web\u00a0api"),  # a no-break space
    (r"(?i)^[a-z]+$", "\u212aelvin"),  # the Kelvin sign, K, matched [a-z] ignoring case
])
def test_word_digit_and_space_classes_take_ascii_only(pattern: str, value: str) -> None:
    assert re.fullmatch(pattern, value), "Python's re reads it in Unicode's way: this case shows nothing"
    assert not Argument(pattern=pattern).matches(value)


def test_a_word_boundary_is_where_an_ascii_word_ends() -> None:
    assert not re.fullmatch(r"^web\b.+$", "webé")
    assert Argument(pattern=r"^web\b.+$").matches("webé")


@pytest.mark.parametrize(("pattern", "value"), [
    (r"^\w+$", "web_2"), (r"^\d+$", "8080"), (r"^\w+\s\w+$", "web\tapi"), (r"^\bweb\b$", "web"),
    (r"^[a-zé]+$", "café"),  # characters a pattern names itself are matched as written
    (r"^caf\u00e9$", "café"),
    (r"^\N{LATIN SMALL LETTER E WITH ACUTE}t\N{LATIN SMALL LETTER E WITH ACUTE}$", "été"),
    (r"^[\w\u00c0-\u024f]+$", "Zürich"),
    (r"^[\u0400-\u04ff]+$", "Москва"),
    (r"(?u)^\w+$", "Zürich"),  # a pattern that asks for Unicode's meanings has them
    (r"(?i)^[a-zéÉ]+$", "CAFÉ"),  # (?i) folds ASCII letters only: both cases of é are named
])
def test_ascii_values_and_characters_a_pattern_names_still_match(pattern: str, value: str) -> None:
    assert Argument(pattern=pattern).matches(value)


def test_a_default_is_checked_as_a_value_is(tmp_path: Path) -> None:
    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump({"runbooks": {"check": {
        "description": "Check a port.", "command": ["true", "{port}"], "risk": "low", "timeout": 10,
        "args": {"port": {"pattern": r"^\d+$", "default": ARABIC_80}}}}}, allow_unicode=True))
    with pytest.raises(ConfigError, match="does not match the pattern"):
        load_config(config, required=True)


def test_the_shipped_baton_yaml_and_the_readmes_example_still_load(tmp_path: Path) -> None:
    assert load_config(ROOT / "baton.yaml", required=True).runbooks
    readme = (ROOT / "README.md").read_text()
    example = readme.split("### `baton.yaml`", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (tmp_path / "srv").mkdir()
    config = tmp_path / "baton.yaml"
    config.write_text(example.replace("/srv/ops", str(tmp_path / "srv")))
    runbook = load_config(config, required=True).runbooks["restart"]
    assert runbook.validate_args({"service": "web"}) == {"service": "web"}
    with pytest.raises(ValueError, match="does not match the allowed pattern"):
        runbook.validate_args({"service": WEB})


@pytest.mark.parametrize(("value", "shown"), [
    ("web", "web"),
    ("Zürich", "'Zürich'"),  # all Latin
    ("Москва", "'Москва'"),  # all Cyrillic
    ("東京タワー", "'東京タワー'"),  # Han and kana are written together
    ("web-東京", "'web-東京'"),
    ("v1.2.3", "v1.2.3"),
    (WEB, "$'w\\u0435b'"),  # Latin with a Cyrillic letter
    ("\u0440\u0430\u0443\u0440\u0430l", "$'\\u0440\\u0430\\u0443\\u0440\\u0430l'"),  # Cyrillic "payp", Latin "l"
    ("\u03bfps", "$'\\u03bfps'"),  # a Greek omicron
    (ARABIC_80, "$'\\u0668\\u0660'"),
    ("\uff57\uff45\uff42", "$'\\uff57\\uff45\\uff42'"),  # fullwidth ｗｅｂ
    ("web\u00a0api", "$'web\\u00a0api'"),  # bash reads $'\xa0' as the byte 0xA0, not a no-break space
    ("1.2.3\u200b", "$'1.2.3\\u200b'"),
    ("a\nb", "$'a\\nb'"),
])
def test_an_argument_is_shown_as_it_is_unless_it_reads_as_another(value: str, shown: str) -> None:
    assert shown_command(["deploy", value]) == f"deploy {shown}"


def test_a_refused_value_that_reads_as_an_allowed_one_is_shown_as_what_it_is(tmp_path: Path) -> None:
    """"`service=worker​` does not match the allowed pattern `^(web|api|worker)$`": a zero-width space pasted from
    a document made a refusal that looked wrong (found by the core hunt)."""
    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["bob"], "runbooks": {"restart": {
        "description": "Restart", "command": ["true", "{service}"], "risk": "high", "timeout": 5,
        "args": {"service": {"pattern": "^(web|api|worker)$"}}}}}), encoding="utf-8")
    runbook = load_config(config).runbooks["restart"]
    with pytest.raises(ValueError) as refused:
        runbook.validate_args({"service": "worker\u200b"})
    assert "`service=$'worker\\u200b'` does not match the allowed pattern `^(web|api|worker)$`" in str(refused.value)
    with pytest.raises(ValueError) as refused:
        runbook.validate_args({"service": "mail"})  # an ordinary value stays as it was written
    assert "`service=mail` does not match" in str(refused.value)
    with pytest.raises(ValueError) as refused:  # a long one is cut between characters, its quote closed
        runbook.validate_args({"service": "\uff57\uff45\uff42-\uff53\uff45\uff52\uff56\uff45\uff52-01-europe"})
    assert ("`service=$'\\uff57\\uff45\\uff42-\\uff53\\uff45\\uff52\\uff56\\uff45\\uff52-'…` does not match"
            in str(refused.value)), str(refused.value)


def _config(tmp_path: Path, counter: Path) -> Path:
    script = ("import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n'); "
              "print('did', ascii(sys.argv[2:]))")
    run = [sys.executable, "-c", script, str(counter)]
    config = tmp_path / "baton.yaml"
    config.write_text(yaml.safe_dump({"approvers": ["alice", "bob"], "runbooks": {
        "restart": {"description": "Restart a service.", "command": [*run, "restart", "{service}"],
                    "args": {"service": {"pattern": r"^\w+$"}}, "risk": "high", "timeout": 10},
        "probe": {"description": "Probe a port.", "command": [*run, "probe", "{port}"],
                  "args": {"port": {"pattern": r"^\d+$", "description": "a port number"}}, "risk": "low",
                  "timeout": 10},
        "greet": {"description": "Greet a city.", "command": [*run, "greet", "{city}"],  # names Cyrillic itself
                  "args": {"city": {"pattern": "^[A-Za-z\u00c0-\u024f\u0400-\u04ff-]+$"}}, "risk": "high",
                  "timeout": 10},
    }}, allow_unicode=True))
    return config


def test_look_alike_values_are_refused_or_shown_for_what_they_are(tmp_path: Path, sqlite_url: str,
                                                                   counter: Path) -> None:
    """End to end, as teammates ask in chat: "wеb" and "٨٠" are refused with the pattern's usual answer and
    nothing runs; a value mixing scripts that a pattern takes (it names Cyrillic itself) is shown escaped on
    the plan and the card, and runs as shown once approved; ordinary values are shown as they are."""
    baton = BatonProcess(sqlite_url, _config(tmp_path, counter), tmp_path).start()
    try:
        pg = baton.client()
        service = pg.ask(f"@baton run restart service={WEB}", user="carol")
        port = pg.ask(f"@baton run probe port={ARABIC_80}", user="carol")
        mixed = pg.ask(f"@baton run greet city=Z{CYRILLIC_E}rich", user="carol")
        plain = pg.ask("@baton run restart service=web", user="carol")
        city = pg.ask("@baton run greet city=Zürich-Москва", user="carol")  # two scripts, each its own word: shown
        # refused, each shown as what it is: written as typed, "wеb" read as the "web" the pattern takes
        refused = pg.wait_reply(service, "does not match the allowed pattern")["text"]
        assert "`service=$'w\\u0435b'` does not match the allowed pattern `^\\w+$`" in refused, refused
        refused = pg.wait_reply(port, "does not match the allowed pattern")["text"]
        assert "`port=$'\\u0668\\u0660'` does not match the allowed pattern `^\\d+$` (a port number)" in refused, refused

        card = pg.wait_card(mixed)
        assert "$'Z\\u0435rich'" in card["text"], card["text"]
        plan = pg.wait_reply(mixed, "Plan:")["text"]
        assert "$'Z\\u0435rich'" in plan and CYRILLIC_E not in plan, plan
        assert "restart web" in pg.wait_card(plain)["text"]
        assert "$'Z\\u00fcrich-\\u041c" in pg.wait_card(city)["text"]
        assert pg.click(card, "bob").status_code == 202
        pg.wait_reply(mixed, "did")
        pg.wait_reply(pg.ask("@baton run probe port=8080", user="carol"), "did")
    finally:
        baton.stop()
    assert sorted(runs_in(counter)) == ["greet Z\u0435rich", "probe 8080"]


@pytest.mark.parametrize("invisible", [
    "\u3164", "\u115f", "\u1160", "\uffa0",  # the Hangul fillers: letters, drawn as nothing
    "\u034f",  # the combining grapheme joiner
    "\ufe00", "\U000e0100",  # variation selectors, with no emoji to select a form of
    "\u17b4", "\u180b",  # a Khmer inherent vowel, a Mongolian free variation selector
    "\u2800",  # the Braille pattern blank, drawn as a space
])
def test_a_character_drawn_as_nothing_that_python_counts_printable_is_shown_as_its_escape(invisible: str) -> None:
    """A value ``(?u)^\\w+$`` takes (a Hangul filler is a letter) showed on the card as ``'web'``, quoted for the
    invisible letter only: the approver read "web", the command got another word. Unicode names these
    characters ignorable (drawn as nothing, as a zero-width space is), but Python counts them printable."""
    value = f"web{invisible}"
    code = ord(invisible)
    escape = f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    assert shown_command(["restart", value]) == f"restart $'web{escape}'"

