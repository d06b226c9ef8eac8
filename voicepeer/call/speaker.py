"""The voice of a reply: each written sentence through TTS onto the outbound track, paced so that the
next piece is ready before the one playing runs out.

A reply's next piece is synthesized while the one before it plays. How long synthesis takes is
learned as the call goes (``SynthesisPace``); a piece that would not be ready in time is cut to what can
be, and the rest is spoken next, while its head plays, so the listener never hears the bot stop
mid-reply to think.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from ..audio.formats import Resampler
from ..backends.base import BackendError
from ..backends.tts import TTS
from ..runtime.workers import run_blocking
from . import events
from .language import CallLanguage, Language
from .playout import Playout
from .reply import Reply
from .text import speakable, split_to_fit
from .turn import UserTurn

SYNTHESIS_MARGIN_S = 0.25
"""A reply's next piece should be ready this long before the audio ahead of it runs out: the
estimate of its synthesis time is an average, and the loop takes a few frames to queue it."""


class Speaker:
    """Speaks replies on ``output`` with the voice of the call's language (``voice``: the TTS of a
    language, ``Services.tts_for``), chosen as each reply starts; ``audible`` is called once per reply,
    when its first voiced frame is handed to the transport."""

    def __init__(
        self,
        voice: Callable[[str], TTS],
        language: CallLanguage,
        output: Playout,
        audible: Callable[[UserTurn], None],
    ) -> None:
        self._voice = voice
        self.language = language
        self.output = output
        self._audible = audible

    def _cut(self, tts: TTS, sentence: str) -> tuple[str, str | None]:
        """What is left to play is the time this piece has: cut it if it would not be ready by then."""
        output, pace = self.output, tts.pace
        budget_s = output.buffered_samples / output.sample_rate - SYNTHESIS_MARGIN_S
        if pace.estimate(sentence) > budget_s:
            cut = split_to_fit(sentence, pace.chars_within(budget_s))
            if cut is not None:
                return cut
        return sentence, None

    async def speak(self, reply: Reply) -> None:
        """Sentences -> TTS -> the track, until the reply's last sentence has been played out."""
        turn, output, lang = reply.turn, self.output, self.language.current
        tts = self._voice(lang.code)
        resampler = Resampler(tts.sample_rate, output.sample_rate)

        def on_frame(_pcm: np.ndarray, _pts: int, sent_at: float, voiced: bool) -> None:
            if voiced and not turn.audible:
                turn.audible = True
                turn.metrics.mark("first_frame_sent_ms", sent_at)
                self._audible(turn)

        output.add_listener(on_frame)
        rest: str | None = None
        first = True
        voiced = True
        try:
            while (sentence := rest or await reply.sentences.get()) is not None:
                rest = None
                if voiced and not first and turn.committed.is_set():
                    sentence, rest = self._cut(tts, sentence)
                first = False
                if voiced:
                    try:
                        await self._say(tts, lang, turn, sentence, resampler)
                    except BackendError as exc:
                        # No voice left (every TTS backend down): the rest of the reply is written.
                        voiced = False
                        turn.send(reply.channel, lambda e=exc: events.error("tts_failed", f"no voice: {e}"))
                await turn.committed.wait()
                reply.spoken.append(sentence)
            await turn.committed.wait()
            output.enqueue(resampler.flush())
            await output.wait_idle()
        finally:
            output.remove_listener(on_frame)

    async def _say(
        self, tts: TTS, lang: Language, turn: UserTurn, sentence: str, resampler: Resampler
    ) -> None:
        """One piece through the TTS onto the track, each chunk queued as it comes (a streaming TTS's
        first audio plays before the piece is synthesized whole), once the turn is committed."""
        loop, output = asyncio.get_running_loop(), self.output
        started = loop.time()
        waited = 0.0  # for the commit, not for the TTS: left out of its pace
        start: int | None = None
        async for chunk in tts.synthesize(speakable(sentence, lang)):
            # Resampled off the loop, which paces every frame.
            pcm = await run_blocking(resampler.push, chunk)
            if start is None:
                turn.metrics.mark("tts_first_audio_ms")
            if not turn.committed.is_set():
                before = loop.time()
                await turn.committed.wait()
                waited += loop.time() - before
            if start is None:
                start = output.queued_total
            output.enqueue(pcm)
        tts.pace.observe(sentence, loop.time() - started - waited)
        if start is not None:
            turn.spans.append((sentence, start, output.queued_total))
