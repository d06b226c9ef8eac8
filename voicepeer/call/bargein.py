"""Speech over the bot's reply, from its onset until it is judged: a bid for the turn, or not.

The bot's voice pauses at the onset whatever the speech turns out to be (the conversation does that);
this keeps the speech's course and asks ``judge_overlap`` at each moment it may be decided: when it
has lasted ``interrupt_after_ms``, when it resumes after a gap, when the detector drops it as a noise,
and once it has ended, by its words. Speech that begins again while those words are judged is another
piece of the same speech (``Overlap.pieces``), decided with the first once it ends too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from ..audio.vad import Utterance
from ..backends.asr import ASR
from ..runtime.tasks import Tasks
from .language import ENGLISH, Language
from .turntaking import (
    Judged,
    Overlap,
    TurnPolicy,
    Verdict,
    judge_overlap,
    judge_pieces,
    lasting_ms,
    the_users,
)

log = logging.getLogger(__name__)

ONSET_MARGIN = 1536
"""Samples (96 ms at 16 kHz) kept before a marked onset when speech is heard again from it: the
unvoiced start of "Stop," comes before the canceller lets enough through to be marked."""

Decide = Callable[[Verdict, str, str, Utterance | None], None]
"""Called with a verdict that is not WAIT, its reason, the speech's words ("" before they are known)
and, for speech that has ended, its utterance."""


class BargeIn:
    def __init__(
        self,
        policy: TurnPolicy,
        asr: ASR,
        tasks: Tasks,
        decide: Decide,
        bot_said: Callable[[], str],
        language: Callable[[], Language] = lambda: ENGLISH,
    ) -> None:
        """``bot_said``: what the bot has said of the reply under way, to tell its echo by;
        ``language``: the call's, whose hums and acknowledgements let the bot go on."""
        self.policy = policy
        self._language = language
        self.asr = asr
        self._tasks = tasks
        self._decide = decide
        self._bot_said = bot_said
        self.overlap: Overlap | None = None
        """The speech being judged, if any."""
        self._heard: list[Utterance] = []
        """Each ended piece's audio, as its words were judged (from its onset, if heard again so)."""

    def starts(self, onset: float, echo: bool = False, sample: int = 0, marked: bool = False) -> None:
        """Speech began over the reply: ``onset`` is the loop time its audio arrived, ``sample`` where
        it began in the stream; ``echo`` and ``marked`` as in ``SpeechStarted``."""
        overlap = Overlap(
            onset=onset,
            echo=echo,
            bot_said=self._bot_said() if echo else "",
            marked=marked,
            onset_sample=sample,
            language=self._language(),
        )
        self.overlap = overlap
        self._heard = []
        self._tasks.spawn(self._interrupt_if_still_speaking(overlap), "overlap-timer")

    def follows(self, onset: float, echo: bool = False, sample: int = 0, marked: bool = False) -> None:
        """Speech began again after the last piece ended, while that piece's words are judged: the user
        went on ("Stop, ... please stop"), and the pieces are decided together once this one ends too.
        It is given its own time to cut in by lasting, from its own onset."""
        overlap = self.overlap
        assert overlap is not None
        overlap.onset, overlap.onset_sample, overlap.marked = onset, sample, marked
        # Each piece is judged by where it began: the one before keeps its own flag (``ends`` took it).
        overlap.echo, overlap.bot_said = echo, self._bot_said() if echo else ""
        overlap.speaking = overlap.ongoing = True
        self._tasks.spawn(self._interrupt_if_still_speaking(overlap), "overlap-timer")

    def pauses(self) -> None:
        # Judged only when it ends: a pause this short is as likely a gap between two words.
        assert self.overlap is not None
        self.overlap.speaking = False

    def resumes(self, now: float) -> None:
        overlap = self.overlap
        assert overlap is not None
        overlap.speaking = True
        self._apply(overlap, *judge_overlap(self.policy, overlap, now))

    def ends(self, utterance: Utterance) -> None:
        overlap = self.overlap
        assert overlap is not None
        overlap.speaking = overlap.ongoing = False
        overlap.pieces.append(None)
        self._heard.append(utterance)
        # The piece as it stands now: a piece that follows while its words are transcribed moves the
        # overlap's onset on.
        piece = dataclasses.replace(overlap)
        self._tasks.spawn(self._judge(overlap, piece, len(overlap.pieces) - 1, utterance), "overlap-judge")

    def discarded(self, now: float) -> None:
        overlap = self.overlap
        assert overlap is not None
        overlap.speaking = overlap.ongoing = False
        if overlap.pieces:  # a noise after words that are being judged: they decide
            self._settle(overlap)
        else:
            self._apply(overlap, *judge_overlap(self.policy, overlap, now, discarded=True))

    def clear(self) -> None:
        """Forgets the speech: judged, or the reply it was over is gone. A verdict still on its way
        is dropped."""
        self.overlap = None
        self._heard = []

    def before(self) -> Utterance | None:
        """What the user said in the pieces that ended before the one going on (the bot's echo left
        out), for the turn that piece takes by lasting: "No. ... I meant Tuesday." is one turn."""
        overlap = self.overlap
        if overlap is None:
            return None
        heard = [u for p, u in zip(overlap.pieces, self._heard, strict=True) if p is None or the_users(p)]
        return joined(heard) if heard else None

    async def _interrupt_if_still_speaking(self, overlap: Overlap) -> None:
        loop = asyncio.get_running_loop()
        due = overlap.onset + lasting_ms(self.policy, overlap) / 1000
        await asyncio.sleep(max(0.0, due - loop.time()))
        if self.overlap is overlap:
            self._apply(overlap, *judge_overlap(self.policy, overlap, loop.time()))

    async def _judge(self, overlap: Overlap, piece: Overlap, index: int, utterance: Utterance) -> None:
        """A piece of the speech that ended before the speech was long enough to cut in: judged by its
        words, and the speech decided once every piece is.

        Speech the front-end marked as another voice than the bot's, whose words still come out as the
        bot's own, is heard again from its onset on: the pre-roll before it is the bot's echo, which
        the ASR's path keeps at full level for a while after a mark, and whisper may give the echo's
        words and drop a short "Stop," after them."""
        judged, heard = await self._hear(piece, utterance)
        if self.overlap is not overlap:
            return
        overlap.pieces[index], self._heard[index] = judged, heard
        self._settle(overlap)

    async def _hear(self, piece: Overlap, utterance: Utterance) -> tuple[Judged, Utterance]:
        """The piece's verdict, and the audio its words were heard in."""
        text = await self._transcribe(utterance.audio)
        verdict, reason = judge_overlap(self.policy, piece, asyncio.get_running_loop().time(), text=text)
        start = max(0, piece.onset_sample - utterance.start_sample - ONSET_MARGIN)
        if piece.marked and reason == "echo" and start > 0:
            onward = await self._transcribe(utterance.audio[start:])
            again = judge_overlap(self.policy, piece, asyncio.get_running_loop().time(), text=onward)
            log.info("speech marked as the user's came out as the echo %r; from its onset: %r", text, onward)
            if again[0] is not Verdict.GO_ON:
                heard = dataclasses.replace(
                    utterance, audio=utterance.audio[start:], start_sample=utterance.start_sample + start
                )
                return (*again, onward), heard
        return (verdict, reason, text), utterance

    def _settle(self, overlap: Overlap) -> None:
        """Decides the speech once every piece is judged and none goes on. A bid is the next turn in
        the audio of the pieces whose words are the user's."""
        if not overlap.settled:
            return
        pieces = [p for p in overlap.pieces if p is not None]
        theirs = [u for p, u in zip(pieces, self._heard, strict=True) if the_users(p)]
        self._apply(overlap, *judge_pieces(pieces), joined(theirs or self._heard[-1:]))

    async def _transcribe(self, audio: np.ndarray) -> str:
        try:
            return (await self.asr.transcribe(audio)).text
        except Exception:
            log.exception("ASR failed on speech during the reply; the bot goes on")
            return ""

    def _apply(
        self, overlap: Overlap, verdict: Verdict, reason: str, text: str = "", said: Utterance | None = None
    ) -> None:
        if self.overlap is overlap and verdict is not Verdict.WAIT:
            self._decide(verdict, reason, text, said)


def joined(utterances: list[Utterance]) -> Utterance:
    """Pieces of one stream, in order, as one utterance: the audio they cover, each sample once (a
    piece's pre-roll may reach back into the piece before)."""
    first, last = utterances[0], utterances[-1]
    parts, covered = [first.audio], first.start_sample + first.audio.size
    for utterance in utterances[1:]:
        parts.append(utterance.audio[max(0, covered - utterance.start_sample) :])
        covered = max(covered, utterance.start_sample + utterance.audio.size)
    return dataclasses.replace(
        last,
        audio=np.concatenate(parts),
        start_sample=first.start_sample,
        voiced_ms=sum(u.voiced_ms for u in utterances),
    )
