"""The floor as a state machine: a table of transitions, each naming where the floor goes and what its
owner does, and the one place the floor changes.

A row matches the floor held and the kind of event; a row with a guard (``when``) matches only if the
guard holds, and the first matching row of a pair wins. Firing a row assigns its floor first and then
runs its handler, so a handler that decides something more (the words over the reply were a bid for
the turn) fires a row of its own, and its floor is the one that stands. Every fired row is counted:
the tests check that the suite goes through all of them.

The events are the turn detector's (``voicepeer.audio.vad``) and the ones below, which the
conversation raises itself: what its speculative turns, its replies and the client come to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..audio.vad import Utterance
from .turntaking import Floor

if TYPE_CHECKING:
    from .turn import UserTurn

Owner = TypeVar("Owner")


# -- what the conversation raises itself -----------------------------------------------------------


@dataclass(frozen=True)
class Committed:
    """The silence after the pending turn lasted: it is the user's turn, and the reply goes out."""

    turn: UserTurn


@dataclass(frozen=True)
class Unanswered:
    """The pending turn ended with nothing to answer: no words in it, or the ASR failed."""

    turn: UserTurn


@dataclass(frozen=True)
class ReplyOver:
    """The reply ended by itself: played out, failed, or the call closed under it."""

    turn: UserTurn


@dataclass(frozen=True)
class GoOn:
    """Speech over the reply was not a bid for the turn: the bot resumes where it paused."""

    reason: str
    text: str = ""


@dataclass(frozen=True)
class CutIn:
    """Speech over the reply that is still going on takes the turn: the reply is cut off."""

    reason: str


@dataclass(frozen=True, eq=False)
class TakeOver:
    """Speech over the reply that has ended takes the turn by its words: it is the next turn."""

    utterance: Utterance
    text: str
    reason: str


@dataclass(frozen=True, eq=False)
class HoldOver:
    """The bot's voice, held on a suspicion of speech over it (``SpeechSuspected``), may go on: no turn
    opened in time. Only the hold it ends counts (identity: a later hold makes it stale)."""


@dataclass(frozen=True)
class Interrupt:
    """The client asked the bot to stop."""


@dataclass(frozen=True)
class Say:
    """A typed user message."""

    text: str


@dataclass(frozen=True)
class Speak:
    """The application has the bot say ``text``: ``now``, cutting off whatever is going on, or as soon
    as the floor is open (the user has finished, the bot's reply is over)."""

    text: str
    now: bool = False


@dataclass(frozen=True)
class Reset:
    """The client asked to forget the conversation."""


# -- the machine ----------------------------------------------------------------------------------


Handler = Callable[[Any, Any], None]
Guard = Callable[[Any, Any], bool]


@dataclass(frozen=True, eq=False)
class Transition:
    """One row: on ``event`` while the floor is ``floor`` (None: any floor), if ``when`` holds, the
    floor goes to ``to`` (None: it stays) and ``run`` is called with the owner and the event."""

    floor: Floor | None
    event: type
    to: Floor | None
    run: Handler | None = None
    when: Guard | None = None

    def __str__(self) -> str:
        where = self.floor.name if self.floor is not None else "ANY"
        goes = self.to.name if self.to is not None else "(stays)"
        guard = f" if {self.when.__name__}" if self.when is not None else ""
        return f"{where} + {self.event.__name__}{guard} -> {goes}"


class FloorMachine(Generic[Owner]):
    """Holds the floor and moves it by ``table``; ``changed`` is called after every transition (the
    owner derives what the client sees from the floor)."""

    def __init__(
        self,
        table: Sequence[Transition],
        owner: Owner,
        changed: Callable[[], None] = lambda: None,
        floor: Floor = Floor.OPEN,
    ) -> None:
        self.table = tuple(table)
        self.owner = owner
        self.floor = floor
        self.ran: Counter[Transition] = Counter()
        """How many times each row fired."""
        self._changed = changed
        self._rows: dict[tuple[Floor | None, type], list[Transition]] = {}
        for row in self.table:
            self._rows.setdefault((row.floor, row.event), []).append(row)

    def find(self, event: object) -> Transition | None:
        """The row ``event`` fires on the floor held now, if any."""
        kind = type(event)
        for row in self._rows.get((self.floor, kind), []) + self._rows.get((None, kind), []):
            if row.when is None or row.when(self.owner, event):
                return row
        return None

    def fire(self, event: object) -> Transition | None:
        """Moves the floor by the row ``event`` matches and runs its handler; None if no row matches,
        and then nothing changes."""
        row = self.find(event)
        if row is None:
            return None
        self.ran[row] += 1
        if row.to is not None:
            self.floor = row.to
        if row.run is not None:
            row.run(self.owner, event)
        self._changed()
        return row
