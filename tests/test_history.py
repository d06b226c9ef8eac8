"""The conversation history forgets in blocks, so the LLM's prompt prefix (and its cache) stays the
same for several turns in a row."""

from __future__ import annotations

import itertools

from peer.llm import History


def test_the_history_is_bounded_and_forgets_the_older_half_at_once():
    history = History(system_prompt="s", max_turns=6)
    prefixes = []
    for i in range(20):
        history.add(f"q{i}", f"a{i}")
        assert len(history.turns) <= 6
        prefixes.append(history.messages("next")[1]["content"])  # the first turn after the system prompt
    # The prompt's first turn changes once every three turns, not every turn.
    changes = sum(1 for a, b in itertools.pairwise(prefixes) if a != b)
    assert changes <= 20 // 3 + 1, prefixes
    assert history.turns[-1] == ("q19", "a19")
    assert len(history.turns) >= 3


def test_a_short_history_is_kept_whole():
    history = History(max_turns=6)
    for i in range(6):
        history.add(f"q{i}", f"a{i}")
    assert [u for u, _ in history.turns] == [f"q{i}" for i in range(6)]
    msgs = history.messages("now")
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": "now"}
    assert len(msgs) == 1 + 2 * 6 + 1
