"""Turn-taking: who may hold the floor, the policy by which the conversation takes and gives it, and
the one rule that decides whether speech over the bot's reply cuts it off.

The floors (the conversation's ``TRANSITIONS`` say, row by row, how each event moves them):

- ``OPEN``: nobody speaks and nothing is pending. Speech that starts gives the floor to the ``USER``.
- ``USER``: the user speaks. At the first short pause the reply is prepared speculatively: ``PENDING``.
- ``PENDING``: the transcript, the LLM and the first TTS piece run, held back from the client, while the
  silence goes on. Speech that resumes throws the speculation away (``USER``); a silence that lasts
  long enough for the phrase (``TurnPolicy``) commits it: ``BOT``.
- ``BOT``: the reply is released to the client and spoken. Speech that starts (or resumes, when the
  turn was committed early on the end-of-turn model's word) is an ``OVERLAP``.
- ``OVERLAP``: the bot's voice is paused at once while the speech is judged by ``judge_overlap``: the
  bot goes on (``BOT``, and an ``ignored`` event says why) or is cut off, and the speech becomes the
  next user turn (``USER`` or ``PENDING``).

A new rule (an end-of-turn model, a barge-in policy) is a field of ``TurnPolicy`` or a row of the
table, rather than another flag threaded through the handlers.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from .language import ENGLISH, Language
from .text import is_backchannel, is_echo_of, words


class Floor(enum.Enum):
    OPEN = "open"
    USER = "user"
    PENDING = "pending"
    BOT = "bot"
    OVERLAP = "overlap"


@dataclass(frozen=True)
class TurnPolicy:
    """How the conversation takes and gives the floor. Times in milliseconds.

    The turn detector (``audio.vad.TurnParams``) says when there is speech and silence; this says what
    the conversation makes of them."""

    complete_silence_ms: int = 200
    """Silence after which a phrase the end-of-turn model judges complete ends the turn, without
    waiting for the detector's ``end_silence_ms``."""
    hold_silence_ms: int = 1000
    """Silence waited for after a phrase that sounds unfinished ("... and", "um"): by the end-of-turn
    model, or without one, by its last words."""
    end_of_turn_threshold: float = 0.5
    """The end-of-turn model's probability at or above which a phrase is complete. Below it the turn
    ends as it would without a model: the model shortens waits, never lengthens them. On the synthetic
    voices this project can test with its verdicts are too unsure for that (complete flite questions
    scored 0.05, cut-off phrases 0.9: ``bench/endofturn.py``), and the speculative reply makes a short
    wait cheap anyway."""
    end_of_turn_pad_ms: int = 100
    """Silence added to the turn before the model judges it. It judges at the detector's first pause,
    ~100 ms into the silence, and was trained on turns ending in ~200 ms of it (pipecat asks after
    0.2 s): with 96 ms, flite's "What is the capital of France?" scored 0.03; with 200 ms, 0.85."""
    suspect_hold_ms: int = 1000
    """How long the bot holds its voice on a suspicion of speech over it (``SpeechSuspected``) for a turn
    to open: the words after a short "Stop," open it 0.5-1 s on. A suspicion that was the bot's own
    voice costs a pause this long in its reply, and nothing else."""
    interrupt_after_ms: int = 1000
    """Speech over the reply that lasts this long cuts the bot off before its words are known. The
    bot's voice pauses at the speech's onset whatever happens; this bounds how long a backchannel
    ("mm-hm", ~0.6 s) may be, not how soon the bot goes quiet."""
    echo_grace_ms: int = 1500
    """Added to ``interrupt_after_ms`` for speech that began where the bot's echo may be (a
    loudspeaker): the bot's voice pauses at the onset, but what it sent before still comes back for
    the echo path's delay (up to ~1.2 s from a loaded client), and that alone must not cut it off.
    Speech that stops sooner is judged by its words, and the bot's own words are not a bid."""
    min_partial_ms: int = 800
    """Turn audio below this gets no partial transcript: whisper guesses wildly on a word and a half."""


class Verdict(enum.Enum):
    WAIT = "wait"
    """Not known yet: the bot stays paused."""
    GO_ON = "go_on"
    """Not a bid for the turn: the bot resumes where it paused."""
    INTERRUPT = "interrupt"
    """The user takes the turn: the reply is cut off."""


Judged = tuple[Verdict, str, str]
"""A verdict, its reason and the words it was given for."""


@dataclass
class Overlap:
    """User speech that began while the bot was replying, until it is judged."""

    onset: float
    """Loop time the audio holding the onset of the piece going on arrived (see ``pieces``)."""
    echo: bool = False
    """The bot's echo may be in it (``SpeechStarted.echo``)."""
    bot_said: str = ""
    """With ``echo``: what the bot had said of its reply at the onset, the words its echo would be."""
    speaking: bool = True
    marked: bool = False
    """The front-end found a voice other than the bot's from the onset on (``SpeechStarted.marked``)."""
    onset_sample: int = 0
    """Where the speech began in the 16 kHz stream (``SpeechStarted.sample``)."""
    language: Language = ENGLISH
    """The call's language when the speech began: its lexicon says what a hum is."""
    pieces: list[Judged | None] = field(default_factory=list)
    """Each piece of the speech that has ended, judged by its words (None while they are transcribed).
    One bid may come in pieces: the detector ends "Stop," after its silence, and "please stop" begins
    while the first piece's words are still being judged."""
    ongoing: bool = True
    """A piece has begun and not yet ended (``speaking`` is False in its pauses too)."""

    @property
    def settled(self) -> bool:
        """Every piece is judged and none goes on: the speech may be decided as a whole."""
        return not self.ongoing and bool(self.pieces) and all(p is not None for p in self.pieces)


def lasting_ms(policy: TurnPolicy, overlap: Overlap) -> int:
    """How long speech over the reply must last, from its onset, to cut the bot off before its words
    are known: longer where the bot's echo may be."""
    return policy.interrupt_after_ms + (policy.echo_grace_ms if overlap.echo else 0)


def judge_overlap(
    policy: TurnPolicy,
    overlap: Overlap,
    now: float,
    *,
    text: str | None = None,
    discarded: bool = False,
) -> tuple[Verdict, str]:
    """The interrupt rule, and the only place it is written. Returns the verdict and its reason.

    ``text``: the speech's transcript once it has ended (None before). ``discarded``: the detector
    dropped it as too short to be speech (a click, a cough).

    Only hums and acknowledgements ("mm-hm", "okay", "I see") let the bot go on: a short answer ("yes",
    "no", "five five") is a turn, because the bot may just have asked for it. Speech where the bot's
    echo may be is given the echo's time before it cuts in by lasting, and if its words are the bot's
    own last words it is the echo, not the user."""
    if discarded:
        return Verdict.GO_ON, "too_short"
    if text is None:
        if overlap.speaking and now - overlap.onset >= lasting_ms(policy, overlap) / 1000:
            return Verdict.INTERRUPT, "speech"
        return Verdict.WAIT, ""
    if not words(text):
        return Verdict.GO_ON, "no_words"
    if overlap.echo and is_echo_of(text, overlap.bot_said, overlap.language):
        return Verdict.GO_ON, "echo"
    if is_backchannel(text, overlap.language):
        return Verdict.GO_ON, "backchannel"
    return Verdict.INTERRUPT, "speech"


def judge_pieces(pieces: Sequence[Judged]) -> Judged:
    """Speech over the reply heard in pieces is one bid: a piece that is one (a "Stop," after a hum,
    "please stop" after a "Stop," whisper heard as "Uh.") makes the whole one, in the words of every
    piece that is not the bot's own; otherwise the bot goes on, for the last piece's reason."""
    bids = [judged for judged in pieces if judged[0] is Verdict.INTERRUPT]
    if not bids:
        return pieces[-1]
    return Verdict.INTERRUPT, bids[0][1], " ".join(judged[2] for judged in pieces if the_users(judged))


def the_users(judged: Judged) -> bool:
    """A piece of speech over the reply whose words are the user's: some, and not the bot's echo."""
    return judged[1] not in ("echo", "no_words") and bool(judged[2].strip())
