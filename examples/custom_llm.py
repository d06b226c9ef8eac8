"""A voice in front of your own code: a rule-based LLM backend, served by voicepeer.

voicepeer's LLM is one small interface (``voicepeer.backends.llm.LLM``): stream a reply to a chat
history, a piece of text at a time. This backend answers from a table of rules instead of a model, as a
shop's phone line might. Put a call into your own application in ``reply()``. Speech recognition,
speech synthesis, turn-taking and WebRTC are voicepeer's own.

    .venv/bin/python examples/custom_llm.py --port 8080

Then open http://127.0.0.1:8080/ and ask "When are you open?" or "Where are you?".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import AsyncIterator, Sequence

from voicepeer.backends.llm import LLM, LLMOptions, Message
from voicepeer.call.services import load_services
from voicepeer.config import Config, ServerConfig
from voicepeer.transport.app import create_app
from voicepeer.transport.drain import serve

RULES: tuple[tuple[str, str], ...] = (
    (r"\b(open|opening|close|closed|hours)\b", "We are open from nine to five, Monday to Friday."),
    (r"\b(where|address|find you)\b", "We are at 12 Harbour Street, next to the station."),
    (r"\b(hello|hi|hey)\b", "Hello! Ask me when we are open, or where to find us."),
)
"""(regular expression, answer): the first rule whose expression is in the user's words answers."""

FALLBACK = "You said: {text}. I only know our opening hours and our address."


class RuleLLM(LLM):
    """Answers the user's last message from ``rules``, streamed a word at a time."""

    def __init__(
        self,
        rules: Sequence[tuple[str, str]] = RULES,
        fallback: str = FALLBACK,
        options: LLMOptions | None = None,
    ) -> None:
        self.rules = [(re.compile(pattern, re.IGNORECASE), answer) for pattern, answer in rules]
        self.fallback = fallback
        self.options = options or LLMOptions()

    def reply(self, text: str) -> str:
        """The whole answer to ``text``. Replace this with a call into your application."""
        for pattern, answer in self.rules:
            if pattern.search(text):
                return answer
        return self.fallback.format(text=text.strip().rstrip(".?!"))

    async def stream(self, messages: list[Message], options: LLMOptions | None = None) -> AsyncIterator[str]:
        options = options or self.options
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        for i, word in enumerate(self.reply(user).split()):
            if i == options.max_tokens:  # a word stands for a token here
                return
            yield word if i == 0 else f" {word}"
            await asyncio.sleep(0)  # a real backend awaits its model or its server here


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="voicepeer with a rule-based LLM")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Config(server=ServerConfig(host=args.host, port=args.port))
    services = load_services(config, llm=RuleLLM())  # voicepeer's speech models, and this LLM
    app = create_app(config, services=services)
    print(f"serving http://{config.server.host}:{config.server.port}/", flush=True)
    # SIGTERM drains (live calls may end for config.server.drain_s seconds); SIGINT stops at once.
    return asyncio.run(serve(app, config.server.host, config.server.port, config.server.drain_s))


if __name__ == "__main__":
    sys.exit(main())
