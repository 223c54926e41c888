"""A graph's picture given as a data URL or as the SVG text itself: Discord's renderer raised decoding it, so
the outbox took the reply (its words too) for a passing failure and tried it again for twenty minutes, then
gave up; the graph's author was told nothing. The picture is checked when the graph's reply is read: the run
fails saying why, on every platform."""

from __future__ import annotations

import base64

import pytest

from bot.messages import Image
from bot.replies import ReplyNotShown, result

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'


@pytest.mark.parametrize("data", [f"data:image/svg+xml;base64,{base64.b64encode(SVG).decode()}", SVG.decode()],
                         ids=["a data URL", "the SVG itself"])
def test_a_reply_whose_picture_is_not_base64_fails_its_run_saying_why(data: str) -> None:
    reply = {"parts": [{"kind": "text", "text": "The chart:"}, {"kind": "image", "alt": "errors", "data": data}]}
    with pytest.raises(ReplyNotShown, match=r"parts\.1\.image\.data: is not base64 \(a data URL, or the "
                                            r"picture itself\?\): give base64\.b64encode\(picture_bytes\)\.decode\(\)"):
        result(reply, failed=False)


@pytest.mark.parametrize("data", [base64.b64encode(SVG * 40).decode(), base64.encodebytes(SVG * 40).decode()],
                         ids=["one line", "wrapped at 76 as encodebytes writes it"])
def test_a_base64_picture_is_taken_as_it_is(data: str) -> None:
    message = result({"parts": [{"kind": "image", "alt": "errors", "data": data}]}, failed=False)
    image = message.parts[0]
    assert isinstance(image, Image) and image.data == data and base64.b64decode(image.data) == SVG * 40
