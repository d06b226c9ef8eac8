"""Cutting a token stream into pieces that can be spoken as soon as they are complete."""

from __future__ import annotations

import math
import re

_SENTENCE_END = re.compile(r"([.!?…]+[\"')\]]*)(\s+)")
_CLAUSE_END = re.compile(r"([,;:—–])(\s+)")
_MARKUP = re.compile(r"[*_#`~>|]+|\[(.*?)\]\(.*?\)")
_SPACE = re.compile(r"\s+")
_WORD_GAP = re.compile(r"\s")


def clean_for_speech(text: str) -> str:
    """Removes markdown and emoji that a TTS voice would read out or stumble over."""
    text = _MARKUP.sub(lambda m: m.group(1) or " ", text)
    text = "".join(ch for ch in text if ch.isascii() or ch.isalpha() or ch in "’‘“”…—–")
    return _SPACE.sub(" ", text).strip()


class SpeechChunker:
    """Accumulates streamed text and returns the complete sentences in it.

    The first piece of a reply is cut early, because the listener is waiting for it: at a clause boundary
    once it has ``first_min_chars`` characters, or after ``first_max_words`` complete words if no
    punctuation has come by then (one or two fewer rather than end on a word that leads into the
    next, "The sky is a"), or at ``first_max_chars`` whatever came (a small model may write
    "240000000..." with no space for a hundred tokens, which took Piper 6 s to speak before anything
    played). The wait for it is the LLM's tokens (~25 ms each for the embedded model on 2 cores)
    plus Piper's synthesis, which grows with the text, so two to four words start the voice sooner
    than five; the rest is synthesized while they play. Later pieces are whole sentences, which sound
    more natural, and are synthesized while the previous one plays; one too long to be ready in time
    is cut then, by the conversation, which knows how much is left to play (``split_to_fit``).

    A reply ends after ``max_sentences`` complete sentences (None: no cap): ``done`` turns True, the rest
    of the text is dropped, and the caller stops the LLM's stream, so no more tokens are generated. A
    small model asked for "one or two sentences" often goes on for five (``bench/replies.py``).
    """

    def __init__(
        self,
        first_min_chars: int = 8,
        first_max_words: int = 4,
        first_max_chars: int = 48,
        max_chars: int = 240,
        max_sentences: int | None = 2,
    ) -> None:
        self.first_min_chars = first_min_chars
        self.first_max_words = first_max_words
        self.first_max_chars = first_max_chars
        self.max_chars = max_chars
        self.max_sentences = max_sentences
        self.sentences = 0
        """Complete sentences handed out so far (a piece cut at a clause or a space is not one)."""
        self.done = False
        """The reply has its ``max_sentences``: push and flush return nothing more."""
        self._buffer = ""
        self._emitted = 0
        self._sentence_end = False

    def push(self, text: str) -> list[str]:
        if self.done:
            return []
        self._buffer += text
        out: list[str] = []
        while not self.done:
            piece = self._cut()
            if piece is None:
                break
            piece = clean_for_speech(piece)
            if piece:
                out.append(piece)
                self._emitted += 1
                if self._sentence_end:
                    self.sentences += 1
                    if self.max_sentences is not None and self.sentences >= self.max_sentences:
                        self.done = True
                        self._buffer = ""
        return out

    def flush(self) -> list[str]:
        piece = "" if self.done else clean_for_speech(self._buffer)
        self._buffer = ""
        return [piece] if piece else []

    def _cut(self) -> str | None:
        buf = self._buffer
        self._sentence_end = False
        for match in _SENTENCE_END.finditer(buf):
            if not _is_abbreviation(buf[: match.end(1)]):
                self._sentence_end = True
                return self._take(match.end(1), match.end())
        if self._emitted == 0:
            for m in _CLAUSE_END.finditer(buf):
                if m.end(1) >= self.first_min_chars:
                    return self._take(m.end(1), m.end())
            # A word is complete once the space after it has arrived.
            lead = len(buf) - len(buf.lstrip())
            spaces = [m.start() + lead for m in _WORD_GAP.finditer(buf.lstrip())]
            if len(spaces) >= self.first_max_words:
                n = self.first_max_words
                # Not on a word that leads into the next ("The sky is a | ..."): one word fewer.
                while n > 2 and buf[spaces[n - 2] + 1 : spaces[n - 1]].lower().strip(",") in _UNFINISHED:
                    n -= 1
                return self._take(spaces[n - 1], spaces[n - 1] + 1)
        limit = self.first_max_chars if self._emitted == 0 else self.max_chars
        if len(buf) > limit:
            space = buf.rfind(" ", 0, limit)
            return self._take(space, space + 1) if space > 0 else self._take(limit, limit)
        return None

    def _take(self, end: int, resume: int) -> str:
        piece, self._buffer = self._buffer[:end], self._buffer[resume:]
        return piece


_JOINS = frozenset(
    "and but or so because which who whom whose that while when where with without until unless "
    "although though since after before".split()
)
"""Words a long sentence can be cut before without the first part sounding cut off mid-phrase. Not
"as" or "than", which would cut "as black | as night" in two."""


def split_to_fit(text: str, max_chars: int, min_words: int = 4) -> tuple[str, str] | None:
    """Cuts ``text`` in two so that the head has at most ``max_chars`` characters (but at least
    ``min_words`` words, and the tail too), or returns None if it cannot be cut that way.

    The cut is at the last clause mark that fits, else before the last joining word ("and", "which",
    ...), else at the last space: the head is spoken on its own, and a head that ends on a clause
    sounds like a pause rather than a stumble. ``head + " " + tail == text``."""
    spaces = [m.start() for m in _WORD_GAP.finditer(text)]
    # Cut points between words, as indices of the space: the head keeps min_words, the tail too.
    count = len(spaces) + 1
    allowed = [i for n, i in enumerate(spaces, start=1) if n >= min_words and count - n >= min_words]
    fitting = [i for i in allowed if i <= max_chars] or allowed[:1]
    if not fitting:
        return None

    def after_clause(i: int) -> bool:
        return text[i - 1] in ",;:—–"

    def before_join(i: int) -> bool:
        following = text[i + 1 :].split(None, 1)
        return bool(following) and following[0].lower() in _JOINS

    for good in (after_clause, before_join):
        best = [i for i in fitting if good(i)]
        if best:
            return text[: best[-1]], text[best[-1] + 1 :]
    return text[: fitting[-1]], text[fitting[-1] + 1 :]


_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "e.g.", "i.e.", "vs.", "etc.", "no."}


def _is_abbreviation(text: str) -> bool:
    raw = text.rsplit(None, 1)[-1] if text.strip() else ""
    if raw.lower() in _ABBREVIATIONS:
        return True
    # "3.5" is cut by the regex only when followed by a space, so digits are safe; a single capital
    # initial ("J. R. R.") is not a sentence end.
    return len(raw) == 2 and raw[0].isupper() and raw[1] == "."


_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")

BACKCHANNELS = frozenset(
    "mm mmm hm hmm mhm mm-hmm mm-hm uh-huh uh huh um ah oh aha ok okay alright right i see got it".split()
)
"""Words a listener says to show they are following, not to take the turn. Not "yes", "no", "yeah" or
"sure": over a reply that may have just asked something, those are answers, and a dropped answer is
worse than a reply cut short."""

_UNFINISHED = frozenset(
    "and but or so because cause if that which who the a an to of for with in on at from my your his "
    "her their our um uh er like is are was were then when than as into about".split()
)
"""Words a finished question or statement does not end on."""


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen \
sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_CONTRACTIONS = {
    "what's": "what is",
    "it's": "it is",
    "that's": "that is",
    "there's": "there is",
    "i'm": "i am",
    "i've": "i have",
    "i'll": "i will",
    "you're": "you are",
    "we're": "we are",
    "don't": "do not",
    "doesn't": "does not",
    "didn't": "did not",
    "can't": "cannot",
    "can not": "cannot",
    "won't": "will not",
    "isn't": "is not",
    "ok": "okay",
}
_TOKEN = re.compile(r"[a-z0-9']+")


def _number_words(token: str) -> str:
    n = int(token)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in token)  # longer numbers: digit by digit


def spoken_words(text: str) -> list[str]:
    """``text`` as the words a listener heard: lower case, no punctuation, hyphenated words split,
    numerals spelled out (``5`` -> five, ``42`` -> forty two), common contractions expanded."""
    text = text.lower().replace("-", " ").replace("’", "'")
    out: list[str] = []
    for token in _TOKEN.findall(text):
        token = token.strip("'")
        if not token:
            continue
        if token.isdigit():
            out.extend(_number_words(token).split())
        else:
            out.extend(_CONTRACTIONS.get(token, token).split())
    return out


_HUM = re.compile(r"(?:[mh]+|uh|ah)(?:-(?:[mh]+|uh|huh))*")
"""Hums as whisper spells them: "Mm-mm", "Hmm", "mhm", "uh-huh"."""


def is_backchannel(text: str) -> bool:
    """True for "mm-hm", "yeah, okay" and the like, and for nothing at all: not a bid for the turn."""
    found = words(text)
    return len(found) <= 3 and all(w in BACKCHANNELS or _HUM.fullmatch(w) for w in found)


ECHO_WORDS = 30
"""The bot's last words an echo is looked for in: ~10 s of speech, more than any echo path holds."""

ECHO_SHARE = 0.6
"""Share of a transcript's words that must be the bot's own, in order, for it to be its echo. Whisper
hears an echo imperfectly ("the word in" for "the world is"), and a user's own words seldom follow
the bot's in order: a question about the bot's answer repeats a word or two of it, not most of it."""


def is_echo_of(text: str, said: str) -> bool:
    """True if ``text`` (heard by the microphone) is mostly the bot's own last words ``said``: its
    voice from a loudspeaker, transcribed."""
    heard, spoken = spoken_words(text), spoken_words(said)[-ECHO_WORDS:]
    if not heard or not spoken:
        return False
    # The longest run of the heard words found in order among the spoken ones.
    common = [0] * (len(spoken) + 1)
    for w in heard:
        previous = 0
        for j, s in enumerate(spoken, 1):
            previous, common[j] = common[j], (previous + 1 if w == s else max(common[j], common[j - 1]))
    return common[-1] >= max(1, math.ceil(ECHO_SHARE * len(heard)))


def looks_unfinished(text: str) -> bool:
    """True when a transcript stops mid-phrase ("I'd like to book a table for, um"), so the user is
    probably still thinking. Whisper often ends such a phrase with a comma or an ellipsis."""
    stripped = text.rstrip()
    if stripped.endswith((",", "...", "…", "-", "—")):
        return True
    found = words(stripped)
    return bool(found) and found[-1] in _UNFINISHED
