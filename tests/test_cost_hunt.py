"""What model calls cost, a hunt: what the digest's own model call wrote, and what it cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.config import BatonConfig, Digest
from bot.messages import Message
from storage.models import Run, ThreadRecord
from tests.fake_models import ScriptedModel, script
from tests.test_digests import Clock, posted_messages
from tests.test_digests_hunt import digest_service_with_model


async def digest_written_by(sqlite_url: str, tmp_path, reply: dict, *, tokens: int = 900, cost: float = 0.01,
                            cron: str = "0 7 * * *", timezone: str = "UTC") -> Message:
    """The digest due at 07:00 UTC of a day with one assistant run (``tokens``, ``cost``), its summary written by a
    model answering ``reply`` (the model's calls: ``calls(tmp_path / "script.json")``)."""
    clock = Clock(datetime(2026, 6, 1, 6, 0, tzinfo=UTC))
    script_path = tmp_path / "script.json"
    script(script_path, [{**reply, "usage": {"input_tokens": 1, "output_tokens": 1}}])
    model = ScriptedModel(messages=iter(()), script_path=str(script_path))
    daily = Digest(platform="playground", channel="ops", cron=cron, timezone=timezone)
    async with digest_service_with_model(sqlite_url, clock, BatonConfig(digests=[daily]), model) as digests:
        async with digests.db.session() as session:
            record = ThreadRecord(platform="playground", channel="ops", thread="1", status="done")
            session.add(record)
            await session.flush()
            session.add(Run(thread_record_id=record.id, platform="playground", channel="ops", graph="assistant",
                            status="done", requested_by="alice", correlation_id="c1", started_at=clock.now,
                            finished_at=clock.now + timedelta(seconds=5), turnaround_ms=5000, tokens=tokens, cost=cost))
        clock.now = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
        assert await digests.run_due(clock.now) == 1
        [message] = await posted_messages(digests)
    return Message.model_validate(message.payload)


async def test_a_digest_summary_written_in_content_blocks_is_shown_as_text(sqlite_url, tmp_path):
    """Providers such as Anthropic answer in a list of blocks: the digest's summary, which was paid for, read
    "[{'type': 'text', 'text': 'A calm day.'}]" above the numbers (the assistant and summaries showed the text)."""
    blocks = [{"type": "text", "text": "A calm day: one assistant answer."}, {"type": "text", "text": " All fine."}]
    card = await digest_written_by(sqlite_url, tmp_path, {"content": blocks})
    assert card.parts[0].text == "A calm day: one assistant answer. All fine."  # type: ignore[union-attr]
    assert "'type'" not in card.plain_text()


@pytest.mark.parametrize("content", ["", "  \n ", [{"type": "text", "text": ""}]])
async def test_a_digest_summary_of_no_words_adds_no_empty_text(sqlite_url, tmp_path, content):
    """A model answering nothing (or blanks) put an empty text part on top of the card, a blank line in chat."""
    card = await digest_written_by(sqlite_url, tmp_path, {"content": content})
    assert card.parts[0].text.startswith("*1* request"), card.parts  # type: ignore[union-attr]
    texts = [part.text for part in card.parts if part.kind in ("text", "note")]  # type: ignore[union-attr]
    assert all(text.strip() for text in texts), card.parts
