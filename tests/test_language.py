"""A call in another language than English: Mandarin, end to end, and the text rules under it.

The Mandarin speech is espeak-ng's (``cmn-latn-pinyin``, two of its variants: Debian has no other
Mandarin voice), which whisper base hears imperfectly: its character error rate on six questions was
0.24-0.41 for the +f3 variant and 0.38-0.42 for +f4 (docs/benchmarks.md, "Languages"). The assertions
on what it heard are on the question that both variants gave at 0.06-0.29, with a bound of 0.5.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re

import numpy as np
import pytest

from tests.support.calls import call, wait_until
from tests.support.scripted import ScriptedASR, ScriptedLLM
from tests.support.speech import read_wav, to_speech_rate
from tests.support.wyoming_servers import wyoming_tts_server
from voicepeer.backends.asr import WhisperASR
from voicepeer.backends.base import UnsupportedLanguage
from voicepeer.backends.chain import Chain, Switch
from voicepeer.backends.espeak import EspeakTTS, voice_for
from voicepeer.backends.registry import BadBackendURL, parse_chain, split_languages
from voicepeer.backends.stages import ASRChain, TTSChain
from voicepeer.call.language import CallLanguage, language
from voicepeer.call.services import Services, build_chain
from voicepeer.call.text import (
    SpeechChunker,
    chinese_number,
    clean_for_speech,
    is_backchannel,
    is_echo_of,
    join_pieces,
    looks_unfinished,
    speakable,
    split_to_fit,
    words,
)
from voicepeer.config import ASRConfig, Config, LLMConfig, TTSConfig
from voicepeer.transport.app import STATE

ZH = language("zh")
QUESTION = "你好，我想问一下，附近有没有好吃的餐厅？"
"""Whisper base heard it at a character error rate of 0.06-0.29 from both espeak variants."""
VOICES = ("cmn-latn-pinyin+f3", "cmn-latn-pinyin+f4")


def cer(reference: str, heard: str) -> float:
    """Character error rate over the Han characters (numerals read as Mandarin says them)."""

    def chars(text: str) -> list[str]:
        text = speakable(text, ZH)
        return [c for c in text if "\u4e00" <= c <= "\u9fff"]

    ref, hyp = chars(reference), chars(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1] / max(1, len(ref))


def han_share(text: str) -> float:
    """The share of Han characters among the text's units: each Han character is one, and so is each
    word in another script (whisper wrote one misheard word, "附近", as "富 King": one unit, not four)."""
    han = sum("\u4e00" <= c <= "\u9fff" for c in text)
    other = re.findall(r"[^\W\d_\u4e00-\u9fff]+", text)
    return han / max(1, han + len(other))


# -- text -------------------------------------------------------------------------------------------


def feed(chunker: SpeechChunker, text: str) -> list[str]:
    out = []
    for ch in text:  # a token a character: the worst case for a cut
        out += chunker.push(ch)
    return out + chunker.flush()


def test_chinese_is_cut_at_its_own_marks_without_spaces():
    pieces = feed(
        SpeechChunker(max_sentences=None),
        "好的，我来帮你查一下天气。北京今天晴，最高气温十五度！明天会下雨吗？会的。",
    )
    assert pieces == [
        "好的，",
        "我来帮你查一下天气。",
        "北京今天晴，最高气温十五度！",
        "明天会下雨吗？",
        "会的。",
    ]


def test_the_first_chinese_piece_comes_at_a_clause_or_a_character_budget():
    assert feed(SpeechChunker(), "北京今天，天气很好，适合出门散步。")[0] == "北京今天，"
    assert feed(SpeechChunker(), "好的，我来帮你查一下天气。")[0] == "好的，"  # short, as the budget runs out
    # No mark at all: cut on the budget, so the voice starts before the sentence is written.
    first = feed(SpeechChunker(), "北京今天天气很好适合出门散步我们可以去公园走走")[0]
    assert first == "北京今天天气"
    # The English rules are unchanged.
    english = feed(SpeechChunker(), "The sky is blue because of the way air scatters light.")
    assert english[0] == "The sky is blue"


def test_a_long_chinese_sentence_is_split_at_a_clause_that_fits():
    text = "北京今天晴，最高气温十五度，最低气温零下三度，风力不大"
    head, tail = split_to_fit(text, 15)
    assert (head, tail) == (
        "北京今天晴，最高气温十五度，",
        "最低气温零下三度，风力不大",
    ) and head + tail == text
    assert split_to_fit("你好吗", 2) is None


def test_pieces_join_without_a_space_between_chinese():
    assert join_pieces(["你好，", "我是助手。", "Nice to meet you."]) == "你好，我是助手。 Nice to meet you."
    assert join_pieces(["Hello.", "How are you?"]) == "Hello. How are you?"


@pytest.mark.parametrize(
    "text", ["嗯", "嗯嗯", "嗯，对对对。", "好的", "对的。", "是的", "哦", "Mm-hmm.", "okay", ""]
)
def test_mandarin_acknowledgements_do_not_take_the_turn(text):
    assert is_backchannel(text, ZH)


@pytest.mark.parametrize(
    "text", ["是", "不对", "对，但是我想问一下", "等一下", "我觉得不对", "好的，那明天呢？"]
)
def test_mandarin_answers_and_bids_do(text):
    assert not is_backchannel(text, ZH)


def test_an_english_call_hears_a_mandarin_hum_as_one():
    assert is_backchannel("嗯嗯") and not is_backchannel("我想问一下")


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("我想订一张，", True),
        ("我想问一下那个", True),
        ("我想去北京和", True),
        ("然后就是", True),
        ("今天天气怎么样？", False),
        ("我想去北京。", False),
        ("是的", False),
    ],
)
def test_a_mandarin_phrase_that_sounds_unfinished(text, unfinished):
    assert looks_unfinished(text, ZH) is unfinished


def test_numbers_are_read_as_mandarin_says_them():
    cases = {"0": "零", "10": "十", "12": "十二", "25": "二十五", "105": "一百零五", "2008": "两千零八"}
    cases |= {"20000": "两万", "1000001": "一百万零一", "13800138000": "一三八零零一三八零零零"}
    for digits, said in cases.items():
        assert "".join(chinese_number(digits)) == said, digits
    assert "".join(chinese_number("0102")) == "零一零二"  # a code, digit by digit
    assert (
        speakable("2024年气温-3.5度，湿度50%，共3个", ZH)
        == "二零二四年气温负三点五度，湿度百分之五十，共三个"
    )
    assert speakable("It is 25 degrees, 50% humidity.") == "It is 25 degrees, 50% humidity."


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("3-5个", "三到五个"),
        ("2024-01-05开会", "二零二四年一月五日开会"),
        ("1,000元", "一千元"),
        ("3:30见", "三点三十分见"),
        ("15:00", "十五点"),
        ("5000年前", "五千年前"),
        ("我有2本书和22个苹果", "我有两本书和二十二个苹果"),
        ("COVID-19疫情", "COVID-19疫情"),
        ("看https://x.cn/a?b=1", "看https://x.cn/a?b=1"),
        ("版本1.2.3", "版本1.2.3"),
        ("你好,我是?", "你好，我是？"),
    ],
)
def test_what_mandarin_text_is_given_to_the_voice(written, said):
    assert speakable(written, ZH) == said


def test_a_cut_on_the_budget_splits_no_number_and_no_latin_word():
    first = feed(SpeechChunker(), "价格一共是123456789元，谢谢")[0]
    assert first == "价格一共是"
    assert feed(SpeechChunker(), "我用Python写代码，很方便")[0] == "我用Python写代码，"
    head, tail = split_to_fit("价格一共是12345678元，不包括运费和税", 7)
    assert head == "价格一共是" and tail.startswith("12345678元")
    # A closing quote that comes in the next token stays with its sentence.
    chunker = SpeechChunker(max_sentences=None)
    pieces = chunker.push("他说：“你好。") + chunker.push("”然后走了。") + chunker.flush()
    assert pieces == ["他说：“你好。”", "然后走了。"]


def test_other_scripts_have_words_and_keep_their_marks():
    assert words("Привет, как дела?") == ["привет", "как", "дела"]
    assert words("नमस्ते, आप कैसे हैं?") == ["नमस्ते", "आप", "कैसे", "हैं"]
    assert words("I'd like a well-known café") == ["i'd", "like", "a", "well-known", "café"]
    assert clean_for_speech("नमस्ते, आप कैसे हैं? 😀") == "नमस्ते, आप कैसे हैं?"


def test_english_text_keeps_its_quotes_and_dashes():
    assert join_pieces(["He said “hi.”", "“Bye,” she said."]) == "He said “hi.” “Bye,” she said."
    assert looks_unfinished("I'd like a table for the –")


def test_the_bots_mandarin_echo_is_told_from_the_user():
    said = "北京今天晴，最高气温15度，最低气温零下三度。"
    assert is_echo_of("最高气温十五度", said, ZH)  # whisper wrote the number the voice read
    assert not is_echo_of("我想问一下明天的天气", said, ZH)


def test_a_call_in_auto_follows_the_language_it_hears_in_a_turn_of_some_length():
    changes = []
    spoken = CallLanguage("auto", changed=lambda lang, detected: changes.append((lang.code, detected)))
    assert spoken.current.code == "en" and spoken.for_asr == "auto"
    spoken.heard("zh", "好")  # a lone word: whisper's guess at its language is poor
    assert spoken.current.code == "en"
    spoken.heard("zh", "你好，我想问一下")
    assert spoken.current is ZH and changes == [("zh", True)]
    assert spoken.tidy("我們下午三點見") == "我们下午三点见"  # whisper's traditional characters
    spoken.ask("en")
    assert spoken.current.code == "en" and changes[-1] == ("en", False)
    spoken.heard("zh", "你好，我想问一下")  # asked for English: no detection
    assert spoken.current.code == "en"


def test_what_a_server_says_it_heard_cannot_break_the_call():
    spoken = CallLanguage("auto")
    for code, text in (("chinese", "你好，我想问一下"), ("auto", "你好，我想问一下"), ("zh", "嗯嗯嗯")):
        spoken.heard(code, text)
        assert spoken.current.code == "en", code
    spoken.heard("zh-CN", "你好，我想问一下")
    assert spoken.current is ZH


def test_a_language_in_a_backends_url_is_kept_whatever_the_call_asks():
    from voicepeer.backends.openai.transcription import OpenAIASR
    from voicepeer.backends.whisperlivekit import WhisperLiveKitASR

    assert WhisperLiveKitASR("ws://h:8000/asr?language=de").ws_url("zh").endswith("language=de")
    assert WhisperLiveKitASR("ws://h:8000/asr").ws_url("zh").endswith("language=zh")
    assert OpenAIASR("http://h:8000/v1?language=de").language_for("zh") == "de"
    assert OpenAIASR("http://h:8000/v1").language_for("zh") == "zh"
    assert OpenAIASR("http://h:8000/v1").language_for(None) == "en"


@pytest.mark.parametrize("code", ["xx", "chinese", "", "zh!", "e"])
def test_a_language_whisper_has_no_code_for_is_no_language(code):
    with pytest.raises(ValueError):
        CallLanguage(code)


async def test_a_language_the_backend_does_not_know_fails_the_request_not_the_backend():
    class EnglishOnly(ScriptedASR):
        async def transcribe(self, audio, language=None):
            if language not in (None, "en"):
                raise UnsupportedLanguage(f"no {language}")
            return await super().transcribe(audio)

    chain = Chain("asr", [EnglishOnly()], timeout_s=5)
    with pytest.raises(UnsupportedLanguage):
        await ASRChain(chain).transcribe(np.zeros(1600, np.int16), "zh")
    assert chain.active is chain.first and chain.switches == 0


# -- configuration ----------------------------------------------------------------------------------


def test_a_tts_chain_per_language():
    urls = parse_chain("tts", "embedded,zh=wyoming://127.0.0.1:10200,espeak-ng,ja=espeak-ng?voice=ja")
    assert split_languages(urls) == {
        "": ("embedded",),
        "zh": ("wyoming://127.0.0.1:10200", "espeak-ng"),
        "ja": ("espeak-ng?voice=ja",),
    }
    with pytest.raises(BadBackendURL, match="only --tts"):
        parse_chain("asr", "zh=wyoming://127.0.0.1:10300")
    with pytest.raises(BadBackendURL, match="no tts backend"):
        parse_chain("tts", "zh=festival")


# -- the models -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("voice", VOICES)
async def test_whisper_base_hears_mandarin_and_tiny_en_still_hears_english(services, make_speech, voice):
    asr = services.asr.chain.first
    assert isinstance(asr, WhisperASR) and asr.models == ("tiny.en", "base")
    # Whisper's languages, but for Cantonese: base has no token for it (large-v3 added one).
    assert {"en", "zh", "ja", "fr"} <= set(
        asr.capabilities.languages
    ) and "yue" not in asr.capabilities.languages
    question = make_speech(QUESTION, voice=voice, wpm=175, lead_s=0.3, tail_s=0.5)
    pcm = to_speech_rate(*read_wav(question.path))
    heard = await services.asr.transcribe(pcm, "zh")
    assert heard.language == "zh" and cer(QUESTION, CallLanguage("zh").tidy(heard.text)) <= 0.5, heard
    english = make_speech("What is the weather like today?", lead_s=0.3, tail_s=0.5)
    heard = await services.asr.transcribe(to_speech_rate(*read_wav(english.path)))
    assert heard.language == "en" and "weather" in heard.text.lower()


@pytest.mark.slow
async def test_espeak_speaks_mandarin_that_whisper_understands(services):
    tts = EspeakTTS(voice_for("zh"), language="zh")
    assert tts.capabilities.languages == ("zh",)
    chunks = [c async for c in tts.synthesize(speakable("我们下午3点在公司门口见面吧。", ZH))]
    pcm = np.concatenate(chunks)
    assert len(chunks) > 1 and 1.5 < pcm.size / tts.sample_rate < 6  # streamed as it is made
    heard = await services.asr.transcribe(to_speech_rate(pcm, tts.sample_rate), "zh")
    assert cer("我们下午三点在公司门口见面吧", CallLanguage("zh").tidy(heard.text)) <= 0.6, heard.text


@pytest.mark.slow
async def test_the_voice_of_a_language_is_its_chain_else_the_first_else_espeak(services):
    mixed = Services(asr=services.asr, llm=services.llm, tts=services.tts, tts_languages={})
    assert mixed.tts_for("en") is services.tts  # Piper's joe speaks English
    zh = mixed.tts_for("zh")
    assert zh is not services.tts and zh.chain.stage == "tts.zh" and zh.chain.first.voice == voice_for("zh")
    assert mixed.tts_for("zh") is zh  # made once
    # The server's own language is the first chain's, whatever its voice says it speaks.
    german = Services(asr=services.asr, llm=services.llm, tts=services.tts, language="de")
    assert german.tts_for("de") is services.tts and services.tts.capabilities.languages == ("en",)
    own = EspeakTTS("cmn-latn-pinyin", language="zh")
    assert (
        Services(asr=services.asr, llm=services.llm, tts=services.tts, tts_languages={"zh": own})
        .tts_for("zh")
        .chain.first
        is own
    )


@pytest.mark.slow
async def test_a_mandarin_chain_speaks_through_its_server_and_falls_back_to_espeak(services, tmp_path):
    """``--tts embedded,zh=wyoming://...,espeak-ng``: Mandarin goes to its own chain, a real Wyoming
    server (wyoming-piper on the bundled voice: the test has no Mandarin voice to give it, and the
    chain does not ask what its server speaks), then espeak-ng once the server is gone."""
    server = wyoming_tts_server(tmp_path)
    chain = None
    try:
        urls = parse_chain("tts", f"embedded,zh=wyoming://127.0.0.1:{server.port},espeak-ng")
        config = Config(tts=TTSConfig(backends=tuple(urls)))
        chain = build_chain("tts", config.tts.chains["zh"], config, 10.0, "zh")
        assert chain.stage == "tts.zh"
        assert [b.name for b in chain.backends] == [f"wyoming://127.0.0.1:{server.port}", "espeak-ng"]
        voice = TTSChain(chain)
        mixed = Services(asr=services.asr, llm=services.llm, tts=services.tts, tts_languages={"zh": voice})
        assert mixed.tts_for("zh") is voice and mixed.tts_for("en") is services.tts
        assert "tts.zh" in {c.stage for c in mixed.chains}  # probed, and shown on /healthz
        switches: list[Switch] = []
        chain.subscribe(switches.append)
        pcm = np.concatenate([c async for c in voice.synthesize("你好，我是你的助手。")])
        assert pcm.size / voice.sample_rate > 0.5 and switches == []
        server.kill()
        pcm = np.concatenate([c async for c in voice.synthesize("你好，我是你的助手。")])
        assert pcm.size / voice.sample_rate > 0.5
        assert [s.to for s in switches] == ["espeak-ng"]
    finally:
        server.stop()
        if chain is not None:
            await chain.aclose()


# -- a call -----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_mandarin_call_is_transcribed_and_answered_in_mandarin(services, make_speech):
    """The embedded model (SmolLM2-135M) writes Chinese characters when told to, which are spoken by
    espeak-ng; what it writes makes little sense: a Chinese-speaking LLM is a server's (docs)."""
    question = make_speech(QUESTION, voice=VOICES[0], wpm=175, lead_s=0.5, tail_s=1.5)
    async with call(services, asr=ASRConfig(language="zh")) as (_server, client):
        sent_at = client.say(read_wav(question.path)[0])
        _, final = await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], 30)
        assert cer(QUESTION, final["text"]) <= 0.5, final
        assert CallLanguage("zh").tidy(final["text"]) == final["text"]  # in simplified characters
        await client.wait_for(lambda m: m["type"] == "metrics", 90)
        reply = [m for m in client.messages("reply") if m["final"]][-1]
        assert han_share(reply["text"]) > 0.8, reply
        onset = client.received.voiced_after(sent_at + question.speech_end_s)
        assert onset is not None, "no reply audio reached the client"


STORY_ZH = (
    "从前有一只小猫，它住在一个安静的小村子里。每天早上，它都会去河边看太阳升起。"
    "有一天，它在河边遇到了一只迷路的小鸭子。小猫决定帮助小鸭子找到回家的路。"
    "它们一起走过了森林，穿过了田野，最后终于找到了鸭妈妈。鸭妈妈非常感谢小猫。"
)


@pytest.mark.slow
async def test_over_a_mandarin_reply_a_hum_is_ignored_and_a_question_cuts_in(services, make_speech):
    llm = ScriptedLLM(default=STORY_ZH)
    storyteller = Services(asr=services.asr, llm=llm, tts=services.tts)
    request = make_speech("给我讲一个关于猫的故事。", voice=VOICES[0], wpm=175, lead_s=0.5, tail_s=0.5)
    hum = make_speech("对对对。", voice=VOICES[0], wpm=175, lead_s=0.0, tail_s=1.0)
    question = make_speech(QUESTION, voice=VOICES[1], wpm=175, lead_s=0.0, tail_s=2.0)
    config = {"asr": ASRConfig(language="zh"), "llm": LLMConfig(max_sentences=None)}
    async with call(storyteller, **config) as (server, client):
        session = server.app[STATE].sessions[client.session_id]
        client.say(read_wav(request.path)[0])
        await client.wait_for(lambda m: m["type"] == "state" and m["state"] == "speaking", 60)
        await asyncio.sleep(1.0)
        client.say(read_wav(hum.path)[0])
        _, ignored = await client.wait_for(lambda m: m["type"] == "ignored", 30)
        assert ignored["reason"] in ("backchannel", "too_short", "no_words"), ignored
        assert client.messages("interrupted") == []
        await asyncio.sleep(1.0)
        client.say(read_wav(question.path)[0])
        _, cut = await client.wait_for(lambda m: m["type"] == "interrupted", 30)
        assert cut["turn"] == 1 and cut["heard"] and han_share(cut["heard"]) > 0.9
        _, final = await client.wait_for(
            lambda m: m["type"] == "transcript" and m["final"] and m["turn"] == 2, 30
        )
        # The words spoken over the bot become the next turn. Their transcript is not held to the
        # question's: in one fresh-clone run the turn came back as "去到三间" (cause not found yet), in
        # another with "附近" as "富 King".
        assert han_share(final["text"]) > 0.8, final
        await wait_until(lambda: session.call.conversation.interruptions == 1, 5)
        # The history keeps what was heard of the story, joined without spaces.
        kept = session.call.conversation.history.turns[0]
        assert kept.reply == cut["heard"] and " " not in kept.reply


@pytest.mark.slow
async def test_config_switches_a_call_to_mandarin_and_back(services, make_speech):
    question = make_speech(QUESTION, voice=VOICES[0], wpm=175, lead_s=0.5, tail_s=1.5)
    english = make_speech("What is the weather like today?", lead_s=0.5, tail_s=1.5)
    async with call(services) as (server, client):
        client.channel.send('{"type": "config", "language": "zh"}')
        _, changed = await client.wait_for(lambda m: m["type"] == "language", 10)
        assert changed == {"type": "language", "language": "zh", "asked": "zh", "detected": False}
        client.say(read_wav(question.path)[0])
        _, final = await client.wait_for(lambda m: m["type"] == "transcript" and m["final"], 30)
        assert cer(QUESTION, final["text"]) <= 0.5, final
        await client.wait_for(lambda m: m["type"] == "metrics" and m["turn"] == 1, 90)
        client.channel.send('{"type": "config", "language": "en"}')
        await client.wait_for(lambda m: m["type"] == "language" and m["language"] == "en", 10)
        client.say(read_wav(english.path)[0])
        _, final = await client.wait_for(
            lambda m: m["type"] == "transcript" and m["final"] and m["turn"] == 2, 30
        )
        assert "weather" in final["text"].lower()
        await client.wait_for(lambda m: m["type"] == "metrics" and m["turn"] == 2, 90)
        # Told to answer in English again (SmolLM2 goes on in the history's Chinese all the same).
        history = server.app[STATE].sessions[client.session_id].call.conversation.history
        assert history.instruction.startswith("Reply only in English")
        client.channel.send('{"type": "config", "language": "klingon"}')
        _, error = await client.wait_for(lambda m: m["type"] == "error", 10)
        assert error["code"] == "bad_value" and error["field"] == "language"
        assert (
            dataclasses.asdict(server.app[STATE].sessions[client.session_id].call.settings)["language"]
            == "en"
        )
