import pytest

from voicepeer.backends.tts import SynthesisPace
from voicepeer.call.text import (
    SpeechChunker,
    clean_for_speech,
    is_backchannel,
    is_echo_of,
    looks_unfinished,
    split_to_fit,
    spoken_words,
)


def feed(chunker: SpeechChunker, text: str, step: int = 3) -> list[str]:
    out = []
    for i in range(0, len(text), step):
        out += chunker.push(text[i : i + step])
    return out + chunker.flush()


def test_sentences_are_cut_as_soon_as_they_end():
    c = SpeechChunker(first_min_chars=1000, first_max_words=1000, max_sentences=None)
    assert c.push("Hello there. How") == ["Hello there."]
    assert c.push(" are you? I am") == ["How are you?"]
    assert c.flush() == ["I am"]


def test_first_piece_is_cut_early_at_a_clause_then_only_at_sentences():
    text = "Paris is the capital of France, and it is also its largest city, by far. It has museums, parks."
    pieces = feed(SpeechChunker(first_min_chars=20, first_max_words=100), text)
    assert pieces == [
        "Paris is the capital of France,",
        "and it is also its largest city, by far.",
        "It has museums, parks.",
    ]


def test_abbreviations_and_decimals_do_not_end_sentences():
    pieces = feed(
        SpeechChunker(first_min_chars=1000, first_max_words=1000, first_max_chars=1000),
        "Dr. Smith paid 3.50 dollars, e.g. to J. R. Tolkien. Done.",
    )
    assert pieces == ["Dr. Smith paid 3.50 dollars, e.g. to J. R. Tolkien.", "Done."]


def test_long_text_without_punctuation_is_cut_at_a_space():
    c = SpeechChunker(first_min_chars=1000, first_max_words=1000, first_max_chars=40, max_chars=40)
    pieces = feed(c, "word " * 30)
    assert all(len(p) <= 40 for p in pieces) and " ".join(pieces) == ("word " * 30).strip()


def test_markup_is_not_spoken():
    assert clean_for_speech("**Paris** is _the_ [capital](http://x) 🇫🇷 #1") == "Paris is the capital 1"


def test_the_first_piece_does_not_end_on_a_word_that_leads_into_the_next():
    text = "The sky is a deep shade of blue, with a hint of pink."
    assert feed(SpeechChunker(), text)[0] == "The sky"
    assert feed(SpeechChunker(), "A spider has eight legs.")[0] == "A spider has eight"
    assert feed(SpeechChunker(), "It is in the middle of the sea.")[0] == "It is"  # never fewer than two


def test_first_piece_without_punctuation_is_cut_after_a_few_words_later_ones_are_not():
    text = "The largest ocean on Earth is the Pacific Ocean which covers a third of the planet. It is deep."
    pieces = feed(SpeechChunker(first_max_words=5), text)
    assert pieces == [
        "The largest ocean on Earth",
        "is the Pacific Ocean which covers a third of the planet.",
        "It is deep.",
    ]


def test_backchannels_are_told_from_bids_for_the_turn():
    # Spellings whisper tiny.en gave for espeak-ng's "Mm-hmm.", "Uh-huh.", "Hmm." and friends.
    for text in ["Mm-mm", "Uh...", "Hmm", "Okay", "Mhm.", "Uh-huh.", "Okay, I see.", "", "..."]:
        assert is_backchannel(text), text
    # Short answers are turns: the bot may just have asked for them (issue 12: "five five" was dropped).
    turns = ["Yes.", "No.", "Yeah.", "Sure.", "Five five.", "Stop!", "Okay, but why?", "What is the weather?"]
    for text in turns:
        assert not is_backchannel(text), text


def test_the_bots_own_words_are_its_echo_however_numbers_and_contractions_are_written():
    said = "It's a common question, but the answer is: 8 hours. Adults need to sleep for 8 hours"
    # A loaded loudspeaker room: whisper heard the reply's "8 hours" as "eight hours." and the bot
    # took its own echo for a bid for the turn.
    assert spoken_words("It's 42-ish") == ["it", "is", "forty", "two", "ish"]
    for heard in ["eight hours.", "Adults need to sleep for eight hours.", "it is a common question"]:
        assert is_echo_of(heard, said), heard
    for heard in ["Nine hours?", "What about children?", "Stop."]:
        assert not is_echo_of(heard, said), heard


def test_unfinished_phrases_are_recognised():
    # Whisper's transcripts of espeak-ng phrases cut mid-sentence.
    for text in [
        "Tell me about the weather and...",
        "What is the weather like today and um?",
        "I have a question about",
        "So,",
    ]:
        assert looks_unfinished(text), text
    for text in ["What is the weather like today?", "Tell me about London.", "Thanks", ""]:
        assert not looks_unfinished(text), text


def test_a_reply_stops_after_max_sentences_and_says_so():
    c = SpeechChunker(first_min_chars=1000, first_max_words=1000, max_sentences=2)
    assert c.push("Paris is the capital. It is big. It has") == ["Paris is the capital.", "It is big."]
    assert c.done and c.sentences == 2
    # The rest is dropped: nothing more is pushed out, and nothing is left to flush.
    assert c.push(" museums. And parks.") == [] and c.flush() == []


def test_pieces_cut_early_are_not_counted_as_sentences():
    text = "Paris is the capital of France, and it is also its largest city. It has museums. And parks."
    c = SpeechChunker(first_min_chars=20, first_max_words=100, max_sentences=2)
    pieces = []
    for i in range(0, len(text), 3):
        pieces += c.push(text[i : i + 3])
        if c.done:
            break
    assert pieces == [
        "Paris is the capital of France,",
        "and it is also its largest city.",
        "It has museums.",
    ]
    # The cap is reached as soon as the second sentence is complete (its end and the space after it).
    assert c.done and i + 3 <= text.index("parks")


def test_without_a_cap_every_sentence_is_spoken():
    text = "One. Two. Three. Four."
    assert feed(SpeechChunker(max_sentences=None), text) == ["One.", "Two.", "Three.", "Four."]
    short = SpeechChunker(max_sentences=2)
    assert feed(short, "One sentence. Then an unfinished") == ["One sentence.", "Then an unfinished"]
    assert not short.done


def test_a_first_piece_without_spaces_or_punctuation_is_still_cut_short():
    # SmolLM2 once answered "We have 240000000000..." for a hundred tokens: no word ended, nothing was
    # spoken until Piper had read it all (6.6 s). The first piece is bounded in characters too.
    chunker = SpeechChunker()
    pieces = chunker.push("We have " + "0" * 200)
    assert pieces and len(pieces[0]) <= chunker.first_max_chars
    later = SpeechChunker()
    later.push("Hello there. ")
    assert all(len(p) <= later.max_chars for p in later.push("1" * 500))


def test_a_long_sentence_is_cut_at_a_clause_then_before_a_joining_word_then_at_a_space():
    text = "Erebo was a magnificent creature with scales as black as the night sky and a body that could fly."
    assert split_to_fit(text, 60) == (
        "Erebo was a magnificent creature",
        "with scales as black as the night sky and a body that could fly.",
    )
    assert split_to_fit(text, 75) == (
        "Erebo was a magnificent creature with scales as black as the night sky",
        "and a body that could fly.",
    )
    clause = "He was fierce and strong, with scales that shone like the sun and a head as tall as a castle."
    assert split_to_fit(clause, 70) == (
        "He was fierce and strong,",
        "with scales that shone like the sun and a head as tall as a castle.",
    )
    bare = "one two three four five six seven eight nine ten"
    assert split_to_fit(bare, 30) == ("one two three four five six", "seven eight nine ten")
    for whole, max_chars in [(text, 60), (clause, 70), (bare, 30), (bare, 0)]:
        head, tail = split_to_fit(whole, max_chars)
        assert f"{head} {tail}" == whole


def test_a_cut_keeps_a_few_words_on_each_side_or_is_not_made():
    assert split_to_fit("Once upon a time there lived", 5) is None  # 6 words: two halves of 4 do not fit
    assert split_to_fit("one two three four five six seven eight", 0) == (
        "one two three four",
        "five six seven eight",
    )
    assert split_to_fit("one two three four five six seven eight nine", 1000) == (
        "one two three four five",
        "six seven eight nine",
    )


def test_the_synthesis_pace_rises_at_once_and_falls_slowly():
    pace = SynthesisPace(seconds_per_char=0.01, fall=0.5)
    pace.observe("x" * 100, 3.0)  # a slow call: believed at once
    assert pace.seconds_per_char == 0.03 and pace.estimate("y" * 10) == pytest.approx(0.3)
    pace.observe("x" * 100, 1.0)  # a fast one: half way there
    assert pace.seconds_per_char == pytest.approx(0.02)
    pace.observe("Hi.", 5.0)  # too short to tell a rate from fixed costs
    assert pace.seconds_per_char == pytest.approx(0.02) and pace.chars_within(1.0) == 50
    assert pace.chars_within(-1.0) == 0
