"""The languages a call may speak: what each one's listeners say without taking the turn, what an
unfinished phrase ends on, how its numbers are read, and what the LLM is told to answer in.

A call has one language at a time (``--language``, the ``config`` command, or ``auto``: the ASR's
detection). The text rules (``voicepeer.call.text``) read the lexicon of the call's language and
English's too: "okay" and "mm-hm" turn up in any transcript. Scripts are told apart by their
characters, not by the setting: Chinese and Japanese are written without spaces, so their text is cut
at ``。！？；，、`` and on a character budget, and each of their characters is a token when a transcript is
compared with what the bot said.

A language with no entry here (``fr``, ``de``...) is handled as a spaced one with English's
lexicon; the ASR, the LLM's instruction and the TTS chain still follow it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..backends.asr import ASR, WHISPER_LANGUAGES, ASRStream, Transcript
from ..backends.base import Capabilities

log = logging.getLogger(__name__)

AUTO = "auto"
"""The call's language is whatever the ASR detects in each turn."""

NAMES: dict[str, str] = {
    "en": "English",
    "zh": "Mandarin Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "yue": "Cantonese",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "ru": "Russian",
    "uk": "Ukrainian",
    "pl": "Polish",
    "tr": "Turkish",
    "ar": "Arabic",
    "hi": "Hindi",
    "vi": "Vietnamese",
    "th": "Thai",
    "id": "Indonesian",
    "sv": "Swedish",
}


@dataclass(frozen=True)
class Lexicon:
    """A language's words for the turn-taking rules. Entries are lower case; for a language written
    without spaces they are phrases matched as parts of the text, not whole words."""

    backchannels: frozenset[str] = frozenset()
    """What a listener says to show they are following, not to take the turn. Not "yes" or "no":
    over a reply that may have just asked something, those are answers."""
    unfinished: frozenset[str] = frozenset()
    """What a finished question or statement does not end on ("and", "the"; 那个, 就是)."""


ENGLISH_LEXICON = Lexicon(
    backchannels=frozenset(
        "mm mmm hm hmm mhm mm-hmm mm-hm uh-huh uh huh um ah oh aha ok okay alright right i see got it".split()
    ),
    unfinished=frozenset(
        "and but or so because cause if that which who the a an to of for with in on at from my your his "
        "her their our um uh er like is are was were then when than as into about".split()
    ),
)

MANDARIN_LEXICON = Lexicon(
    # Simplified and traditional: whisper writes either. 对 ("right") is Mandarin's usual
    # acknowledgement ("对对对"); a lone 是 ("yes") is left out, as "yes" is in English.
    backchannels=frozenset(
        "嗯 嗯嗯 嗯哼 唔 哦 噢 喔 啊 呃 额 对 對 对的 對的 对对 對對 对对对 對對對 好 好的 好吧 行 "
        "是的 是啊 明白 了解 知道了 懂了 没错 沒錯 原来如此 原來如此".split()
    ),
    unfinished=frozenset(
        "那个 那個 这个 這個 就是 然后 然後 还有 還有 但是 可是 因为 因為 所以 如果 而且 或者 还是 還是 "
        "和 跟 与 與 比如 呃 额 嗯那个".split()
    ),
)


@dataclass(frozen=True)
class Language:
    code: str
    """ISO 639-1 (``zh``), as Whisper names it."""
    lexicon: Lexicon = field(default_factory=Lexicon)
    spaced: bool = True
    """Words are separated by spaces; False for Chinese and Japanese."""

    @property
    def name(self) -> str:
        return NAMES.get(self.code, self.code)

    @property
    def reply_instruction(self) -> str:
        """What the LLM's system prompt is given besides the application's instructions: nothing for
        English (the prompts are written in it), else the language its reply must be in."""
        if self.code == "en":
            return ""
        if self.code == "zh":
            return "请只用简体中文回答，口语化、简短，不要用列表或表情符号。\nReply only in Mandarin Chinese."
        return f"Reply only in {self.name} (language code {self.code}), whatever language the user writes."


ENGLISH = Language("en", ENGLISH_LEXICON)

_KNOWN = {
    "en": ENGLISH,
    "zh": Language("zh", MANDARIN_LEXICON, spaced=False),
    "ja": Language(
        "ja",
        Lexicon(backchannels=frozenset("うん はい ええ そう そうそう なるほど へえ".split())),
        spaced=False,
    ),
}


def language(code: str) -> Language:
    """The rules of ``code`` (``zh-CN`` and ``zh_TW`` are ``zh``): a known language's, else a spaced
    language's with no lexicon of its own."""
    base = normalize(code)
    return _KNOWN.get(base) or Language(base)


def normalize(code: str) -> str:
    """``zh-CN`` -> ``zh``; ``auto`` stays; ValueError for anything that is not a language Whisper has
    a code for (the ASR could not be asked for it)."""
    text = str(code).strip().lower()
    if text == AUTO:
        return AUTO
    base = re.split(r"[-_]", text, maxsplit=1)[0]
    if base not in WHISPER_LANGUAGES:
        raise ValueError(f"expected a language code as Whisper has them (en, zh, ...) or auto, got {code!r}")
    return base


MIN_WORDS_TO_SWITCH = 3
MIN_WIDE_TO_SWITCH = 6
"""Words (characters, in a script without spaces) a detected turn needs before the call's language
follows it: whisper guesses the language of a lone "okay" or a cough poorly ("嗯嗯嗯" too), and one
wrong guess would answer in it."""


class CallLanguage:
    """The language one call speaks now: the one asked for (``--language``, the ``config`` command),
    or with ``auto`` the one the ASR last heard in a turn of some length. ``changed`` is told of each
    change, and whether it was detected."""

    def __init__(self, asked: str = "en", changed: Callable[[Language, bool], None] | None = None) -> None:
        """``asked``: the server's ``--language``, which the call starts with."""
        self.asked = normalize(asked)
        self.current = language("en" if self.asked == AUTO else self.asked)
        self.changes = 0
        """Times the language changed during the call."""
        self._changed = changed

    @property
    def instruction(self) -> str:
        """What the LLM is told of the language: ``Language.reply_instruction``, and for English too
        once the call has been in another, whose turns in the history a model would go on in."""
        said = self.current.reply_instruction
        if not said and self.changes:
            return "Reply only in English, whatever language earlier turns were in."
        return said

    @property
    def for_asr(self) -> str:
        """What the ASR is asked for: the language, or ``auto``. A backend whose URL names a language
        (``--asr http://...?language=de``) keeps that one, as the operator set it up."""
        return self.asked

    def ask(self, asked: str) -> None:
        asked = normalize(asked)
        if asked == self.asked:
            return
        self.asked = asked
        if asked != AUTO and asked != self.current.code:
            self._set(language(asked), detected=False)

    def heard(self, code: str | None, text: str) -> None:
        """A turn's transcript, in the language the ASR says it was in (a server may say anything)."""
        if self.asked != AUTO or not code:
            return
        try:
            code = normalize(code)
        except ValueError:
            return
        if code in (AUTO, self.current.code):
            return
        from .text import is_wide, words

        found = len(words(text))
        if found >= (MIN_WIDE_TO_SWITCH if is_wide(text) else MIN_WORDS_TO_SWITCH):
            self._set(language(code), detected=True)

    def _set(self, new: Language, detected: bool) -> None:
        self.current = new
        self.changes += 1
        if self._changed is not None:
            self._changed(new, detected)

    def tidy(self, text: str, heard_in: str | None = None) -> str:
        """A transcript (``heard_in`` a language, else the call's) in the script the language is
        written in here: whisper writes Mandarin in traditional or simplified characters as it pleases,
        and ``zh`` is simplified (OpenCC's ``t2s``, from voicepeer[multilingual]; without it, as
        whisper wrote it)."""
        if (heard_in or self.current.code) != "zh" or not text:
            return text
        convert = _simplifier()
        return convert(text) if convert is not None else text


@functools.cache
def _simplifier() -> Callable[[str], str] | None:
    try:
        import opencc
    except ImportError:
        log.warning("opencc is not installed: Mandarin transcripts keep whisper's script")
        return None
    return opencc.OpenCC("t2s").convert


class CallASR(ASR):
    """The stage's ASR as one call uses it: each request in the call's language (or ``auto``), each
    transcript in its script. Partial transcripts, barge-in and the turn's own all go through it."""

    def __init__(self, asr: ASR, language: CallLanguage) -> None:
        self._asr = asr
        self.language = language
        self.name = asr.name

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return self._asr.capabilities

    async def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        heard = await self._asr.transcribe(audio, language or self.language.for_asr)
        return dataclasses.replace(heard, text=self.language.tidy(heard.text, heard.language))

    async def open_stream(self, language: str | None = None) -> ASRStream:
        return _TidyStream(await self._asr.open_stream(language or self.language.for_asr), self.language)


class _TidyStream(ASRStream):
    def __init__(self, stream: ASRStream, language: CallLanguage) -> None:
        self._stream = stream
        self._language = language

    async def feed(self, audio: np.ndarray) -> None:
        await self._stream.feed(audio)

    @property
    def partial(self) -> str:
        return self._language.tidy(self._stream.partial)

    async def finish(self) -> Transcript:
        heard = await self._stream.finish()
        return dataclasses.replace(heard, text=self._language.tidy(heard.text, heard.language))

    async def aclose(self) -> None:
        await self._stream.aclose()
