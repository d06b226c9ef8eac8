"""docs/configuration.md, generated from the declarations so that the table cannot fall behind them.

``python -m voicepeer.config --markdown > docs/configuration.md`` writes it; a test compares.
"""

from __future__ import annotations

import inspect

from .option import Declared, declared, sections

INTRO = """\
# Configuration

<!-- Generated from voicepeer/config/ (network.py, speech.py): edit the declarations there, then run
     `python -m voicepeer.config --markdown > docs/configuration.md` (tests/test_configuration.py
     fails while this file is stale). -->

Every option is a flag of `voicepeer serve` (also accepted by `check` and `token`, before or after the
subcommand) and an environment variable; a flag wins over its variable. `voicepeer --help` lists them
with the values they have on this machine. A value of the wrong kind or out of range (a negative thread
count, timeout or silence, a port over 65535, `inf` or `nan`) is a usage error: the server exits with
status 2 and names the flag before it loads anything. A repeatable flag's variable is a comma-separated
list.

"In a call" marks what the `config` control command ([protocol](protocol.md)) may change for one call
while it runs, and within which bounds (the length, for text); the server's value is where it starts.
In code, each option is a field of a section of `voicepeer.config.Config`: `config.server.port`.
"""

HEADER = (
    "| flag | environment | field | default | values | in a call | description |\n"
    "| --- | --- | --- | --- | --- | --- | --- |"
)


def markdown(root: type) -> str:
    """The whole page, one table per section of ``root`` (a ``Config`` class)."""
    options = declared(root)
    parts = [INTRO]
    for name, section in sections(root):
        doc = inspect.cleandoc(section.__doc__ or "")
        parts.append(f"## `{name}`\n\n{doc}\n\n{HEADER}")
        parts.append("\n".join(_row(d) for d in options if d.section == name) + "\n")
    return "\n".join(parts)


def _row(d: Declared) -> str:
    opt = d.option
    flag = f"`{opt.flag}`" + (f" {opt.metavar}" if opt.metavar else "")
    shown = d.show(d.default)
    default = opt.shown or (shown if shown == "none" else f"`{shown}`")
    live = f"{opt.live.low} to {opt.live.high} {opt.live.unit}" if opt.live else ""
    cells = (flag, f"`{d.env}`", f"`{d.path}`", default, _values(d), live, opt.help)
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _values(d: Declared) -> str:
    opt = d.option
    if d.kind is tuple:
        return "repeatable"
    if d.kind is bool:
        return "true or false"
    if opt.choices:
        return ", ".join(f"`{c}`" for c in opt.choices)
    if opt.low is None and opt.high is None:
        words = [n for n in opt.none if isinstance(n, str)]
        return f"`{words[0]}` for none" if words and d.optional else ""
    low = "" if opt.low is None else f"{'>' if opt.above else '≥'} {opt.low:g}"
    high = "" if opt.high is None else f"≤ {opt.high:g}"
    return ", ".join(p for p in (low, high) if p)
