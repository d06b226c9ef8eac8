"""The conversation history forgets in blocks, so the LLM's prompt prefix (and its cache) stays the
same for several turns in a row."""

from __future__ import annotations

import itertools

from voicepeer.backends.llm import Exchange, History, repeats


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
    assert history.turns[-1] == Exchange("q19", "a19")
    assert len(history.turns) >= 3


def test_a_short_history_is_kept_whole():
    history = History(max_turns=6)
    for i in range(6):
        history.add(f"q{i}", f"a{i}")
    assert [t.user for t in history.turns] == [f"q{i}" for i in range(6)]
    msgs = history.messages("now")
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": "now"}
    assert len(msgs) == 1 + 2 * 6 + 1


def test_a_reply_that_repeats_an_earlier_one_is_not_kept():
    template = "I'm glad you're happy with the answer. I'll make sure to include the correct punctuation."
    history = History()  # drop_repeats is the default
    assert history.add("What's the capital of France?", "Paris.")
    assert history.add("Why is the sky blue?", template)
    # The same sentence again, a word changed: the turn is left out, the question with it, and the turn
    # it repeats is forgotten too, so the template is no longer in the prompt to be copied.
    assert not history.add("How far is the moon?", template.replace("glad", "happy"))
    assert history.turns == [Exchange("What's the capital of France?", "Paris.")]
    # Short replies and new ones are kept, even when they share a few words with an earlier one.
    assert history.add("And Spain?", "Paris.")
    assert history.add("Why is the sky blue?", template)
    assert history.add("Who wrote it?", "I'm glad you asked: Shakespeare wrote Romeo and Juliet.")
    assert len(history.turns) == 4


def test_repeats_are_kept_when_asked():
    history = History(drop_repeats=False)
    same = "The same answer every time."
    assert history.add("q1", same) and history.add("q2", same)
    assert len(history.turns) == 2


def test_the_repeat_rule():
    assert repeats("the cat sat on the mat", "yes, the cat sat on the mat today")
    assert not repeats("a cat sat on the warm sofa now", "the cat sat on the mat")  # 2 of 6 trigrams
    assert not repeats("Paris.", "Paris.")  # too short to tell
    # A template: the same three opening words, whatever follows ("The answer is 72." to everything).
    assert repeats("The answer is no, the capital of France is Paris.", "The answer is 72.")
    assert repeats("The answer is Paris.", "The answer is 8.")
    assert not repeats("Paris is the capital of France.", "Madrid is the capital of Spain.")
