"""A reply as a small pipeline of concurrent stages, so each starts as soon as the one before it has
something: the LLM streams tokens, the chunker cuts them into sentences, and the delivery stage (the
voice, ``voicepeer.call.speaker``, or the text alone for a call without one) takes each sentence while
the LLM is still writing the next.

The reply runs before its turn is committed; nothing reaches the track or the client until it is
(``UserTurn.send``, ``UserTurn.committed``). Interruption is each stage's own business: the turn's task
is cancelled, and each stage lets go of what it holds (the LLM's stream, the track's listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from ..backends.base import BackendError
from . import events
from .events import EventHub
from .text import SpeechChunker, join_pieces
from .toolloop import TOOL_APOLOGY, Aside
from .turn import UserTurn

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I can't answer right now."


class Reply:
    """One turn's reply: the sentences written so far, and the ones delivered."""

    def __init__(self, turn: UserTurn, channel: EventHub) -> None:
        self.turn = turn
        self.channel = channel
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        """Written pieces, in order, then None."""
        self.spoken: list[str] = []
        """Pieces handed to the track (or, without a voice, to the client)."""

    async def write(self, stream: AsyncIterator[str | Aside], max_sentences: int | None) -> None:
        """LLM -> sentences. A failing model is apologised for, unless part of a reply is on its way.
        An ``Aside`` (from a reply that calls tools) is said as it is, after what the model has said."""
        turn = self.turn
        chunker = SpeechChunker(max_sentences=max_sentences)
        written: list[str] = []

        def put(piece: str) -> None:
            self.sentences.put_nowait(piece)
            written.append(piece)
            so_far = join_pieces(written)
            turn.send(self.channel, lambda t=so_far: events.reply(turn.number, t, final=False))

        try:
            async with contextlib.aclosing(stream):
                async for token in stream:
                    if isinstance(token, Aside):
                        for piece in chunker.flush():
                            put(piece)
                        if token.text:
                            put(token.text)
                        continue
                    turn.metrics.mark("llm_first_token_ms")
                    for piece in chunker.push(token):
                        put(piece)
                    if chunker.done:
                        break  # the reply is long enough: closing the stream stops the model
            for piece in chunker.flush():
                self.sentences.put_nowait(piece)
        except BackendError as exc:
            log.warning("turn: %s", exc)
            turn.send(self.channel, lambda e=exc: events.error("llm_failed", str(e)))
            if not written:  # nothing of a reply is on its way: apologise instead
                self.sentences.put_nowait(APOLOGY)
        finally:
            self.sentences.put_nowait(None)

    async def write_only(self) -> None:
        """Delivery without a voice: the reply is the text, "spoken" once the turn is committed."""
        while (sentence := await self.sentences.get()) is not None:
            await self.turn.committed.wait()
            self.spoken.append(sentence)

    async def run(
        self,
        stream: AsyncIterator[str | Aside],
        max_sentences: int | None,
        deliver: Callable[[Reply], Awaitable[None]] | None,
    ) -> str:
        """Writes and delivers the reply (``deliver``: the voice; None: the text alone); returns the text
        that was delivered, or "" if there was none but the apology. A failing stage is reported in a
        ``reply_failed`` event, and what was delivered before it stands."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.write(stream, max_sentences))
                group.create_task(deliver(self) if deliver is not None else self.write_only())
        except* Exception as failure:
            log.error("reply failed", exc_info=failure)
            message = f"the reply failed: {failure.exceptions[0]}"
            self.turn.send(self.channel, lambda: events.error("reply_failed", message))
        text = join_pieces(self.spoken)
        if text and text not in (APOLOGY, TOOL_APOLOGY):
            self.channel.send(events.reply(self.turn.number, text, final=True))
            return text
        return ""
