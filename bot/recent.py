"""What a long-running process remembers of the latest few keys only: the oldest are forgotten first.

A set or dict kept per thread, channel, delivery or node attempt "for as long as it may be needed" grew for good
wherever the moment it was no longer needed never came in this process (another replica settled it, a thread
locked for good). Forgetting the oldest only means saying something once more, or looking before a retry.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

K = TypeVar("K")
REMEMBERED = 10_000  # the usual bound: far more than are ever needed at once


def forget_oldest(keyed: dict[Any, Any], limit: int) -> None:
    """Drop ``keyed``'s oldest entries (the first inserted) beyond ``limit``."""
    while len(keyed) > limit:
        del keyed[next(iter(keyed))]


class Recent(Generic[K]):
    """The latest ``limit`` keys added: a set for saying or logging something once (for a thread, a person, a
    channel); adding a key again makes it the latest."""

    def __init__(self, limit: int = REMEMBERED) -> None:
        self.limit = limit
        self._keys: dict[K, None] = {}  # in the order added (a dict keeps it)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def add(self, key: K) -> None:
        self._keys.pop(key, None)
        self._keys[key] = None
        forget_oldest(self._keys, self.limit)

    def discard(self, key: K) -> None:
        self._keys.pop(key, None)
