"""A reply that calls tools: rounds of the model's stream, with the tools it asks for run in between.

Round by round: the model streams (its words go on to be spoken as they come); if it called tools, they
run (all of one round at once), their calls and results join the turn's messages in OpenAI's format,
and the model goes on from there. A tool runs only once the turn is committed, never for a speculation
the user may still talk over. The model must answer after ``rounds`` rounds, or at once if it asks for
the very calls it has already had answered (a small model, or a server that hides the results from it,
asks again and again).

Interruption: the turn's task is cancelled and the stream with it, but a tool already running is left
to finish (what it does cannot be undone by dropping the request); its late result is reported in a
``tool_result`` event marked ``dropped`` and goes nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.llm import LLM, LLMOptions, Message, ToolCall, ToolChoice, assistant_message, tool_message
from . import events
from .events import EventHub
from .tools import Toolbox, ToolOutcome
from .turn import UserTurn

log = logging.getLogger(__name__)

TOOL_APOLOGY = "Sorry, I couldn't get that done right now."
"""Said instead of a reply when a tool failed: the model is not trusted to say so itself."""


@dataclass(frozen=True)
class Aside:
    """Words said as they are, between the model's: a filler while a tool runs, an apology. Empty: only
    speak what the model has said so far (it stopped to call a tool mid-sentence)."""

    text: str = ""


Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any] | None"]


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except (ValueError, RecursionError):
        return arguments


class ToolLoop:
    """One reply's rounds. ``steps`` holds the messages the tools added, for the history."""

    def __init__(
        self,
        llm: LLM,
        messages: list[Message],
        options: LLMOptions,
        toolbox: Toolbox,
        turn: UserTurn,
        channel: EventHub,
        spawn: Spawn,
        *,
        rounds: int,
        filler: str,
        filler_after_s: float,
        first_choice: ToolChoice = "auto",
    ) -> None:
        """``first_choice``: ``required`` makes the model call a tool in the first round."""
        self.llm, self.messages, self.options, self.toolbox = llm, messages, options, toolbox
        self.turn, self.channel, self.spawn = turn, channel, spawn
        self.rounds, self.filler, self.filler_after_s = rounds, filler, filler_after_s
        self.first_choice = first_choice
        self.steps: list[Message] = []

    async def run(self) -> AsyncIterator[str | Aside]:
        seen: set[tuple[str, str]] = set()
        forced = False
        said_any = False
        for done_rounds in range(self.rounds + 1):
            choice: ToolChoice = "none" if forced or done_rounds == self.rounds else "auto"
            if done_rounds == 0 and choice == "auto":
                choice = self.first_choice
            said: list[str] = []
            calls: list[ToolCall] = []
            stream = self.llm.stream(self.messages + self.steps, self.options, self.toolbox.specs, choice)
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if isinstance(item, ToolCall):
                        calls.append(item)
                    else:
                        said.append(item)
                        yield item
            if not calls or choice == "none":
                return  # an answer (a model that calls tools when told not to: its words stand)
            said_any = said_any or bool("".join(said).strip())
            if said:
                yield Aside()  # speak "Let me check" now, not after the tool
            keys = {(c.name, _canonical(c.arguments)) for c in calls}
            if keys <= seen:
                log.info("turn %d: the model asked again for %s; it must answer now", self.turn.number, keys)
                forced = True
                continue
            seen |= keys
            await self.turn.committed.wait()  # no side effect for a turn the user may still talk over
            for call in calls:
                self.channel.send(events.tool_call(self.turn.number, call.id, call.name, call.arguments))
            outcomes: list[ToolOutcome] | None = None
            task = self.spawn(self._run(calls), "tools")
            if task is None:  # the call is closing
                return
            try:
                if self.filler and not said_any:
                    finished, _ = await asyncio.wait({task}, timeout=self.filler_after_s)
                    if not finished:
                        said_any = True
                        yield Aside(self.filler)
                outcomes = await asyncio.shield(task)
            finally:
                if outcomes is None:  # cut off while the tools ran: their results go nowhere
                    task.add_done_callback(self._dropped)
            self.steps.append(assistant_message("".join(said), calls))
            self.steps.extend(tool_message(o.call.id, o.result) for o in outcomes)
            for outcome in outcomes:
                self.channel.send(events.tool_result(self.turn.number, outcome))
            failed = [o for o in outcomes if not o.ok]
            if failed:
                for outcome in failed:
                    log.warning("turn %d: tool %s: %s", self.turn.number, outcome.call.name, outcome.error)
                    self.channel.send(events.error("tool_failed", str(outcome.error)))
                yield Aside(TOOL_APOLOGY)
                return

    async def _run(self, calls: Sequence[ToolCall]) -> list[ToolOutcome]:
        return list(await asyncio.gather(*(self.toolbox.run(call) for call in calls)))

    def _dropped(self, task: asyncio.Task[list[ToolOutcome]]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        for outcome in task.result():
            self.channel.send(events.tool_result(self.turn.number, outcome, dropped=True))
