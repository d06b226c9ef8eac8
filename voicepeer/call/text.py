"""Text as the call speaks and hears it: a token stream cut into pieces that can be spoken as soon as
they are complete, and transcripts read for hums, unfinished phrases and the bot's own echo.

Scripts are told apart by their characters: Chinese and Japanese (``WIDE``) are written without
spaces, so they are cut at their own punctuation (``。！？；`` ends a sentence, ``，、：`` a clause, with no
space after either) and on a character budget, and each of their characters counts as a word. The
words of a language's lexicon come from ``voicepeer.call.language``.
"""

from __future__ import annotations

import math
import re
import unicodedata

from .language import ENGLISH, ENGLISH_LEXICON, MANDARIN_LEXICON, Language

WIDE = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""Kana and the CJK ideographs: scripts written without spaces, a character a word."""
_WIDE_CHAR = re.compile(f"[{WIDE}]")

_SENTENCE_END = re.compile(r"([.!?…]+[\"')\]]*)(\s+)")
_CLOSERS = "”’」』）)\\]"
# A closing quote may come in the next token: the end is known once a character that is none follows.
_WIDE_SENTENCE_END = re.compile(f"([。！？；]+[{_CLOSERS}]*|[.!?]+(?=[{WIDE}]))(\\s*)(?=[^{_CLOSERS}])")
_WIDE_END_PENDING = re.compile(f"[。！？；][{_CLOSERS}]*\\s*$")
_CLAUSE_END = re.compile(r"([,;:—–])(\s+)")
_WIDE_CLAUSE_END = re.compile(f"([，、：]|[,:](?=\\s*[{WIDE}]))(\\s*)")
_WIDE_CLAUSE_MARKS = "，、：；,;:"
_UNBREAKABLE = re.compile(r"[0-9A-Za-z.,%:]")
"""A character a cut on the budget must not fall next to: it would split a number or a word."""
_MARKUP = re.compile(r"[*_#`~>|]+|\[(.*?)\]\(.*?\)")
_SPACE = re.compile(r"\s+")
_WORD_GAP = re.compile(r"\s")
_WIDE_PUNCTUATION = "。，、！？；：（）《》「」『』"
"""Marks only Chinese and Japanese text uses (not the quotes and dashes English shares)."""


def is_wide(text: str) -> bool:
    """Mostly written in a script without spaces (more such characters than Latin letters)."""
    wide = len(_WIDE_CHAR.findall(text))
    return wide > 0 and wide >= sum(ch.isascii() and ch.isalpha() for ch in text)


def clean_for_speech(text: str) -> str:
    """Removes markdown and emoji that a TTS voice would read out or stumble over."""
    text = _MARKUP.sub(lambda m: m.group(1) or " ", text)
    text = "".join(ch for ch in text if ch.isascii() or ch.isalpha() or ch in _KEPT or _is_mark(ch))
    return _SPACE.sub(" ", text).strip()


_KEPT = "’‘“”…—–" + _WIDE_PUNCTUATION


def _is_mark(ch: str) -> bool:
    """A combining mark (Devanagari's vowel signs, Thai's tones): part of the letter before it."""
    return unicodedata.category(ch).startswith("M")


def join_pieces(pieces: list[str]) -> str:
    """Pieces of one reply as one text: a space between them, except where both sides are wide
    characters or punctuation ("你好，" + "我是" is "你好，我是")."""
    out = ""
    for piece in pieces:
        if out and not (_wide_edge(out[-1]) and _wide_edge(piece[:1])):
            out += " "
        out += piece
    return out


def _wide_edge(ch: str) -> bool:
    return bool(ch) and (bool(_WIDE_CHAR.match(ch)) or ch in _WIDE_PUNCTUATION)


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

    Wide text (Chinese, Japanese: no spaces) is cut the same way with its own marks, and where the
    English rules count words it counts characters: the first piece at a clause once it has
    ``first_min_wide`` characters, else at ``first_max_wide``; later ones at ``max_wide``. A character
    of such a script carries about what three Latin letters do, and costs a small model ~1.8 tokens
    (SmolLM2: 33 for 18 characters, where an English word is ~1.3): six characters, about three
    words, wait for ~11 tokens, where twelve waited for ~22 (Mandarin's first audio 890 ms after the
    first token, at the p50 of bench.latency --language zh).

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
        first_min_wide: int = 4,
        first_max_wide: int = 6,
        max_wide: int = 80,
    ) -> None:
        self.first_min_chars = first_min_chars
        self.first_max_words = first_max_words
        self.first_max_chars = first_max_chars
        self.max_chars = max_chars
        self.first_min_wide = first_min_wide
        self.first_max_wide = first_max_wide
        self.max_wide = max_wide
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
        ends = [m for m in _SENTENCE_END.finditer(buf) if not _is_abbreviation(buf[: m.end(1)])]
        wide_end = _WIDE_SENTENCE_END.search(buf)
        if wide_end is not None:
            ends.append(wide_end)
        if ends:
            match = min(ends, key=lambda m: m.end(1))
            self._sentence_end = True
            return self._take(match.end(1), match.end())
        if is_wide(buf):
            if _WIDE_END_PENDING.search(buf):
                return None  # a sentence ends here, once the next token shows no closing quote follows
            return self._cut_wide(buf)
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
                while (
                    n > 2 and buf[spaces[n - 2] + 1 : spaces[n - 1]].lower().strip(",") in _ENGLISH_UNFINISHED
                ):
                    n -= 1
                return self._take(spaces[n - 1], spaces[n - 1] + 1)
        limit = self.first_max_chars if self._emitted == 0 else self.max_chars
        if len(buf) > limit:
            space = buf.rfind(" ", 0, limit)
            return self._take(space, space + 1) if space > 0 else self._take(limit, limit)
        return None

    def _cut_wide(self, buf: str) -> str | None:
        first = self._emitted == 0
        if first:
            for m in _WIDE_CLAUSE_END.finditer(buf):
                if len(_WIDE_CHAR.findall(buf[: m.end(1)])) >= self.first_min_wide:
                    return self._take(m.end(1), m.end())
        limit = self.first_max_wide if first else self.max_wide
        if len(buf) <= limit:
            return None
        marks = _clause_marks(buf[:limit])
        if marks and (first or marks[-1] >= self.first_min_wide):
            # Out of budget: a short clause ("好的，") rather than a cut mid-phrase.
            return self._take(marks[-1], marks[-1])
        cut = _safe_cut(buf, limit, 1)
        return self._take(cut, cut)

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
    sounds like a pause rather than a stumble. ``head + " " + tail == text``; for wide text (no
    spaces) ``head + tail == text``, cut at the last clause mark that fits, else at ``max_chars``, each
    side keeping ``min_words`` characters."""
    if is_wide(text):
        return _split_wide(text, max_chars, min_words)
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


def _split_wide(text: str, max_chars: int, min_chars: int) -> tuple[str, str] | None:
    allowed = range(min_chars, len(text) - min_chars + 1)
    if not allowed:
        return None
    fitting = [i for i in _clause_marks(text) if i in allowed and i <= max_chars]
    cut = fitting[-1] if fitting else max(min_chars, min(max_chars, allowed[-1]))
    if not fitting:
        cut = _safe_cut(text, cut, min_chars, allowed[-1])
    return text[:cut], text[cut:]


def _clause_marks(text: str) -> list[int]:
    """Where wide text may be cut after a clause mark (indices after it); not inside 1,000 or 3:30."""
    return [
        i + 1
        for i, ch in enumerate(text)
        if ch in _WIDE_CLAUSE_MARKS
        and not (ch.isascii() and text[i - 1 : i].isdigit() and text[i + 1 : i + 2].isdigit())
    ]


def _safe_cut(text: str, cut: int, low: int, high: int | None = None) -> int:
    """``cut``, or the nearest index at or before it (not below ``low``), else after it (up to
    ``high``), that splits no number and no Latin word ("1234|567", "Pyth|on")."""

    def splits(i: int) -> bool:
        return (
            0 < i < len(text) and bool(_UNBREAKABLE.match(text[i - 1])) and bool(_UNBREAKABLE.match(text[i]))
        )

    for i in range(cut, low - 1, -1):
        if not splits(i):
            return i
    for i in range(cut + 1, (len(text) if high is None else high) + 1):
        if not splits(i):
            return i
    return cut


_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "e.g.", "i.e.", "vs.", "etc.", "no."}


def _is_abbreviation(text: str) -> bool:
    raw = text.rsplit(None, 1)[-1] if text.strip() else ""
    if raw.lower() in _ABBREVIATIONS:
        return True
    # "3.5" is cut by the regex only when followed by a space, so digits are safe; a single capital
    # initial ("J. R. R.") is not a sentence end.
    return len(raw) == 2 and raw[0].isupper() and raw[1] == "."


_MARKS = "\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u0900-\u0dff\u0e00-\u0eff"
"""Combining marks, and the Indic and Thai blocks whole (their vowel signs are marks, not letters)."""
_LETTER = f"(?:(?![{WIDE}])[^\\W_]|[{_MARKS}'])"
"""A letter or digit of any script but the wide ones, or an apostrophe: ``[a-z0-9']`` in English."""
_WORD = re.compile(f"{_LETTER}+(?:-{_LETTER}+)*|[{WIDE}]")

_ENGLISH_UNFINISHED = ENGLISH_LEXICON.unfinished


def words(text: str) -> list[str]:
    """Lower-case words, and each character of a wide script as a word of its own."""
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
_TOKEN = re.compile(f"{_LETTER}+|[{WIDE}]")


def _number_words(token: str) -> str:
    n = int(token)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    return " ".join(_ONES[int(d)] for d in token)  # longer numbers: digit by digit


_DIGITS_ZH = "零一二三四五六七八九"
_UNITS_ZH = ("", "十", "百", "千")
_GROUPS_ZH = ("", "万", "亿", "万亿")


def _section_zh(n: int) -> str:
    """0 < n < 10000 in Chinese numerals, with 零 for the gaps (1005: 一千零五)."""
    out, gap = "", False
    for power in (3, 2, 1, 0):
        digit = n // 10**power % 10
        if digit == 0:
            gap = bool(out)
            continue
        if gap:
            out += "零"
            gap = False
        out += _DIGITS_ZH[digit] + _UNITS_ZH[power]
    return out


def _digits_zh(digits: str) -> str:
    return "".join(_DIGITS_ZH[int(d)] for d in digits)


def chinese_number(token: str) -> list[str]:
    """A string of digits as a Mandarin speaker reads it, one character each: 25 -> 二十五, 10 -> 十,
    20000 -> 两万, 2008 -> 两千零八; from nine digits on (a phone number; a written reply says 14亿, not
    1400000000) and with a leading zero (a code), digit by digit."""
    if len(token) > 8 or (len(token) > 1 and token.startswith("0")):
        return list(_digits_zh(token))
    n = int(token)
    if n == 0:
        return ["零"]
    groups, text, gap = [], "", False
    while n:
        groups.append(n % 10000)
        n //= 10000
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            gap = bool(text)
            continue
        if text and (gap or group < 1000):
            text += "零"
        gap = False
        text += _section_zh(group) + _GROUPS_ZH[index]
    if text.startswith("一十"):
        text = text[1:]
    if text[0] == "二" and len(text) > 1 and text[1] in "百千万亿":
        text = "两" + text[1:]
    return list(text)


_KEEP_AS_WRITTEN = re.compile(r"[A-Za-z][\w.:/?&=#%+@-]*|\d+(?:\.\d+){2,}")
"""Latin words, URLs, addresses, versions (COVID-19, https://x.cn/a?b=1, 1.2.3): the voice reads them."""
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)")
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_RANGE = re.compile(r"(?<![\d.])(\d+)[-~～](\d+)(?![\d.])")
_YEAR = re.compile(r"(?<!\d)(1\d{3}|2[01]\d{2})(?=年)")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.])(-?)(\d+)(?:\.(\d+))?(%?)")
_MEASURES = "个位次天年种件条只本张台岁周辆家杯碗瓶块"
"""Measure words before which two is 两, not 二 (两个, 两年; the hour is 两点 too)."""
_HALF_WIDTH = {",": "，", "?": "？", "!": "！", ";": "；", ":": "："}


def _number_zh(m: re.Match[str]) -> str:
    sign, whole, fraction, percent = m.groups()
    after = m.string[m.end() : m.end() + 1]
    said = "两" if whole == "2" and not fraction and not percent and after in _MEASURES + "点" else ""
    said = said or "".join(chinese_number(whole))
    if fraction:
        said += "点" + _digits_zh(fraction)
    if percent:
        said = "百分之" + said
    return ("负" if sign else "") + said


def _mandarin_numbers(text: str) -> str:
    text = _THOUSANDS.sub("", text)
    text = _DATE.sub(lambda m: f"{m.group(1)}年{int(m.group(2))}月{int(m.group(3))}日", text)
    text = _TIME.sub(
        lambda m: f"{int(m.group(1))}点" + (f"{int(m.group(2))}分" if int(m.group(2)) else ""), text
    )
    text = _RANGE.sub(r"\1到\2", text)
    text = _YEAR.sub(lambda m: _digits_zh(m.group(1)), text)
    return _NUMBER.sub(_number_zh, text)


def speakable(text: str, lang: Language = ENGLISH) -> str:
    """``text`` as the TTS should be given it. Mandarin: numerals in Chinese characters (3.5 三点五,
    50% 百分之五十, -3 负三, 2个 两个, 1,000 一千, 2024年 digit by digit, 3:30 三点三十分, 3-5 三到五,
    2024-01-05 as a date), half-width marks after a Chinese character as full-width ones; Latin words,
    URLs and versions as written. Other languages: as it is (Piper's phonemizer reads numerals)."""
    if lang.code != "zh":
        return text
    out, at = [], 0
    for kept in _KEEP_AS_WRITTEN.finditer(text):
        out += [_mandarin_numbers(text[at : kept.start()]), kept.group()]
        at = kept.end()
    out.append(_mandarin_numbers(text[at:]))
    text = "".join(out)
    return re.sub(f"(?<=[{WIDE}])[,?!;:]", lambda m: _HALF_WIDTH[m.group()], text)


def spoken_words(text: str, lang: Language = ENGLISH) -> list[str]:
    """``text`` as the words a listener heard: lower case, no punctuation, hyphenated words split,
    numerals spelled out (``5`` -> five, ``42`` -> forty two; in Mandarin 五, 四十二, a character
    each), common contractions expanded, each character of a wide script a word."""
    text = text.lower().replace("-", " ").replace("’", "'")
    out: list[str] = []
    for token in _TOKEN.findall(text):
        token = token.strip("'")
        if not token:
            continue
        if token.isdigit() and lang.code == "zh":
            out.extend(chinese_number(token))
        elif token.isdigit():
            out.extend(_number_words(token).split())
        else:
            out.extend(_CONTRACTIONS.get(token, token).split())
    return out


_HUM = re.compile(r"(?:[mh]+|uh|ah)(?:-(?:[mh]+|uh|huh))*")
"""Hums as whisper spells them: "Mm-mm", "Hmm", "mhm", "uh-huh"."""


MAX_WIDE_BACKCHANNEL = 6
"""The longest acknowledgement in a wide script, in characters ("对对对，好的")."""


def is_backchannel(text: str, lang: Language = ENGLISH) -> bool:
    """True for "mm-hm", "yeah, okay", "嗯，对对" and the like, and for nothing at all: not a bid for
    the turn. The call's language's lexicon is read and English's too."""
    lowered = text.lower()
    latin = _WORD.findall(_WIDE_CHAR.sub(" ", lowered))
    listening = lang.lexicon.backchannels | ENGLISH_LEXICON.backchannels
    if len(latin) > 3 or not all(w in listening or _HUM.fullmatch(w) for w in latin):
        return False
    wide = "".join(_WIDE_CHAR.findall(lowered))
    if not wide:
        return True
    if len(wide) > MAX_WIDE_BACKCHANNEL:
        return False
    lexicon = lang.lexicon if not lang.spaced else MANDARIN_LEXICON
    return _phrases(lexicon.backchannels).fullmatch(wide) is not None


_PHRASES: dict[frozenset[str], re.Pattern[str]] = {}


def _phrases(entries: frozenset[str]) -> re.Pattern[str]:
    """A pattern for a run of a wide lexicon's phrases (longest first, so 对对对 is one)."""
    pattern = _PHRASES.get(entries)
    if pattern is None:
        wide = sorted((e for e in entries if _WIDE_CHAR.search(e)), key=len, reverse=True)
        pattern = re.compile("(?:" + "|".join(map(re.escape, wide)) + ")+") if wide else re.compile("(?!)")
        _PHRASES[entries] = pattern
    return pattern


ECHO_WORDS = 30
"""The bot's last words an echo is looked for in: ~10 s of speech, more than any echo path holds."""

ECHO_SHARE = 0.6
"""Share of a transcript's words that must be the bot's own, in order, for it to be its echo. Whisper
hears an echo imperfectly ("the word in" for "the world is"), and a user's own words seldom follow
the bot's in order: a question about the bot's answer repeats a word or two of it, not most of it."""


ECHO_WIDE_CHARS = 60
"""The same ~10 s for a wide script, whose characters are its words."""


def is_echo_of(text: str, said: str, lang: Language = ENGLISH) -> bool:
    """True if ``text`` (heard by the microphone) is mostly the bot's own last words ``said``: its
    voice from a loudspeaker, transcribed."""
    heard = spoken_words(text, lang)
    spoken = spoken_words(said, lang)[-(ECHO_WIDE_CHARS if is_wide(said) else ECHO_WORDS) :]
    if not heard or not spoken:
        return False
    # The longest run of the heard words found in order among the spoken ones.
    common = [0] * (len(spoken) + 1)
    for w in heard:
        previous = 0
        for j, s in enumerate(spoken, 1):
            previous, common[j] = common[j], (previous + 1 if w == s else max(common[j], common[j - 1]))
    return common[-1] >= max(1, math.ceil(ECHO_SHARE * len(heard)))


def looks_unfinished(text: str, lang: Language = ENGLISH) -> bool:
    """True when a transcript stops mid-phrase ("I'd like to book a table for, um"; "我想订一张, 那个"),
    so the user is probably still thinking. Whisper often ends such a phrase with a comma or an
    ellipsis."""
    stripped = text.rstrip()
    if stripped.endswith((",", "...", "…", "-", "—", "，", "、")):
        return True
    if _wide_edge(stripped[-1:]):
        tail = "".join(_WIDE_CHAR.findall(stripped))[-4:]
        return any(tail.endswith(entry) for entry in lang.lexicon.unfinished | MANDARIN_LEXICON.unfinished)
    found = words(stripped)
    return bool(found) and found[-1] in lang.lexicon.unfinished | _ENGLISH_UNFINISHED
