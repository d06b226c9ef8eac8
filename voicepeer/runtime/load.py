"""Whether the server's own inference keeps up: admission by what the calls' turns measure.

``--max-sessions`` counts calls, and what a call costs depends on how much its user talks, how long the
replies are, and what else runs on the cores. Past what the cores can do nothing fails: every reply
just comes later, for every caller. So each turn reports, as its first audio goes out, how long the
in-process stages took to bring it (the ASR from the pause that started the answer, the LLM to its
first token, the TTS to its first audio: ``turn_compute_ms``), and a new call is refused (503, and a
front door tries another replica) when the recent turns say that one more would put a typical turn
over the budget.

The prediction is deliberately simple: with ``n`` calls talking, a turn's compute is shared about
``n`` ways at its busiest, so one more call makes it about ``(n + 1) / n`` times as long. It needs a
few turns to say anything (an idle server admits up to ``--max-sessions``), and one call is always
admitted: refusing on an empty server would only turn a slow machine into a dead one. Time spent in
a remote backend is not counted: its server has its own admission, and refusing calls here would not
make it faster.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping

WINDOW_S = 20.0
"""Turns older than this say nothing about now: calls come and go within a minute, and an average
over one lagged the load by the length of a turn or two (six callers arriving 8 s apart were all
admitted on turns measured while two of them talked)."""

RECENT_TURNS = 4
"""The newest turns the typical one is taken from."""

MIN_TURNS = 2
"""Fewer recent turns than this and the load is unknown (so not a reason to refuse)."""

MAX_TURNS = 32

SEGMENTS = (
    ("asr", "pause_ms", "transcript_ms"),
    ("llm", "transcript_ms", "llm_first_token_ms"),
    ("tts", "llm_first_token_ms", "tts_first_audio_ms"),
)
"""(stage, from mark, to mark) of a turn's ``metrics`` event, each timed from the end of speech."""


def turn_compute_ms(marks: Mapping[str, object], local: Callable[[str], bool]) -> float | None:
    """The in-process share of a turn's time to first audio, from its ``metrics`` event; None if the
    turn has none to tell (typed, cut off before audio, or every stage remote). ``local(stage)``: the
    stage ran in this process."""
    total, counted = 0.0, False
    for stage, start, end in SEGMENTS:
        a, b = marks.get(start), marks.get(end)
        if not local(stage) or not isinstance(a, int | float) or not isinstance(b, int | float):
            continue
        total += max(0.0, float(b) - float(a))
        counted = True
    return total if counted else None


class InferenceLoad:
    """The recent turns' compute, and the admission verdict drawn from it."""

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        min_turns: int = MIN_TURNS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.min_turns = min_turns
        self._clock = clock
        self._turns: deque[tuple[float, float]] = deque(maxlen=MAX_TURNS)
        self.refused = 0
        self.observed = 0

    def observe(self, compute_ms: float) -> None:
        self.observed += 1
        self._turns.append((self._clock(), compute_ms))

    def typical_ms(self) -> float | None:
        """The median compute of the newest turns of the last ``window_s``; None with too few."""
        horizon = self._clock() - self.window_s
        recent = [ms for at, ms in self._turns if at >= horizon][-RECENT_TURNS:]
        return statistics.median(recent) if len(recent) >= self.min_turns else None

    def refusal(self, calls: int, budget_ms: float) -> str | None:
        """Why a new call should wait, with ``calls`` up already and ``budget_ms`` for a turn's
        compute (0: no limit); None to admit it."""
        if budget_ms <= 0 or calls == 0:
            return None
        typical = self.typical_ms()
        if typical is None:
            return None
        predicted = typical * (calls + 1) / calls
        if predicted <= budget_ms:
            return None
        self.refused += 1
        return (
            f"the server's inference would not keep up: turns take {typical:.0f} ms to their first audio"
            f" with {calls} call(s), about {predicted:.0f} ms with one more (budget {budget_ms:.0f} ms)"
        )

    def status(self) -> dict[str, object]:
        """For /healthz."""
        typical = self.typical_ms()
        return {"turn_compute_ms": None if typical is None else round(typical), "refused": self.refused}
