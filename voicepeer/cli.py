"""Command line: ``voicepeer serve`` (the default), ``voicepeer check`` and ``voicepeer token``.

Every option declared in ``voicepeer.config`` is a flag here and an environment variable (both shown in
--help), so the same settings work from a shell, a Makefile or docker-compose. The flags are read off
the declarations: nothing about an option is written in this file.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence

from .backends.registry import BadBackendURL
from .config import OPTIONS, Config, Declared
from .config.option import sections
from .runtime import models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicepeer", description="A WebRTC voice agent peer (aiortc).")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="start the server (default)")
    check = sub.add_parser("check", help="load every model once, print where it came from, and exit")
    token = sub.add_parser("token", help="print a per-call token minted from --auth-token (for a backend)")
    token.add_argument("--ttl", type=float, default=300, help="seconds the token is valid (%(default)s)")
    token.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable the call starts with (its system prompt's {NAME}), signed into the token",
    )
    _add_options(parser)
    for sub_parser in (serve, check, token):
        # Accepted after the subcommand too; SUPPRESS keeps a subcommand's defaults from overwriting
        # what was given before it (`voicepeer --port 9000 serve`).
        _add_options(sub_parser, argument_default=argparse.SUPPRESS)
    return parser


def _add_options(parser: argparse.ArgumentParser, argument_default: object = None) -> None:
    for name, section in sections(Config):
        summary = inspect.cleandoc(section.__doc__ or "").split("\n")[0]
        group = parser.add_argument_group(f"{name} options", summary)
        for declared in OPTIONS:
            if declared.section == name:
                _add_option(group, declared, argument_default)


def _add_option(group: argparse._ArgumentGroup, declared: Declared, argument_default: object) -> None:
    option = declared.option
    text = option.help.replace("%", "%%")
    if declared.kind is tuple:
        # Each flag is one item; without any, config_from_args reads the variable.
        group.add_argument(
            option.flag,
            dest=declared.dest,
            action="append",
            type=_converter(declared),
            default=argument_default,
            metavar=option.metavar,
            help=f"{text}; repeatable [{declared.env}, comma-separated]",
        )
        return
    # The variable is the flag's default: argparse converts (and so checks) a text default like a value
    # given on the command line, and names the flag when it is wrong.
    value = os.environ.get(declared.env, declared.default)
    shown = declared.show(value).replace("%", "%%")
    extra: dict[str, object] = {"nargs": "?", "const": True} if declared.kind is bool else {}
    group.add_argument(
        option.flag,
        dest=declared.dest,
        type=_converter(declared),
        default=value if argument_default is None else argument_default,
        choices=option.choices or None,
        metavar=option.metavar,
        help=f"{text} [{declared.env}] ({shown})",
        **extra,
    )


def _converter(declared: Declared) -> Callable[[str], object]:
    """The declaration's parser, failing the way argparse reports: a usage error (exit 2) with the flag."""

    def convert(text: str) -> object:
        try:
            return declared.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def config_from_args(args: argparse.Namespace) -> Config:
    values: dict[str, object] = {}
    for declared in OPTIONS:
        value = getattr(args, declared.dest)
        if declared.kind is tuple:
            if value is None:
                env = os.environ.get(declared.env)
                try:
                    value = (declared.default if env is None else declared.parse(env),)
                except ValueError as exc:
                    print(f"voicepeer: {declared.env} (as {declared.option.flag}): {exc}", file=sys.stderr)
                    raise SystemExit(2) from None
            # Each flag (or the variable) is a comma-separated list; repeated flags add to it.
            value = tuple(item.strip() for items in value for item in items if item.strip())
        values[declared.path] = value
    return Config().with_options(values)


def _usage_problem(config: Config) -> str | None:
    """What the options say together that none says alone."""
    ice = config.ice
    bad_turn = [u for u in ice.turn_urls if not u.startswith(("turn:", "turns:"))]
    if bad_turn:
        return f"not a TURN URL: {bad_turn[0]}"
    if ice.turn_urls and not (ice.turn_secret or ice.turn_secret_file):
        return "--turn-url needs --turn-secret"
    from .call.logic import Logic, LogicError

    try:
        Logic.from_config(config)
    except LogicError as exc:
        return str(exc)
    return None


def _check(config: Config) -> int:
    """Loads the embedded models and probes every backend of every chain: one line per backend, and
    exit 1 if a stage has none that answers."""
    from .backends.chain import describe
    from .call.services import load_services

    try:
        services = load_services(config)
    except (models.ModelNotFound, BadBackendURL) as exc:
        print(f"voicepeer: {exc}", file=sys.stderr)
        return 1

    async def probe() -> list[tuple[str, str, str | None]]:
        lines = []
        for chain in services.chains:
            for state in chain.states:
                backend = state.backend
                try:
                    async with asyncio.timeout(chain.timeout_s):
                        await backend.probe()
                except Exception as exc:
                    lines.append((chain.stage, backend.name, describe(exc, chain.timeout_s)))
                else:
                    where = getattr(backend, "path", None)
                    lines.append((chain.stage, backend.name + (f" ({where})" if where else ""), None))
        for chain in services.chains:
            await chain.aclose()
        return lines

    lines = asyncio.run(probe())
    for stage, name, error in lines:
        print(f"{stage}: {name}: {'ok' if error is None else error}")
    eot = services.end_of_turn
    print(f"end_of_turn: {eot.path if eot is not None else 'off'}")
    dead = [c.stage for c in services.chains if all(e is not None for s, _, e in lines if s == c.stage)]
    if dead:
        print(f"voicepeer: no {', '.join(dead)} backend answers", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    logging.basicConfig(
        level=config.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    problem = _usage_problem(config)
    if problem:
        print(f"voicepeer: {problem}", file=sys.stderr)
        return 2
    if args.command == "check":
        return _check(config)
    if args.command == "token":
        if not config.security.auth_token:
            print("voicepeer: set --auth-token or VOICEPEER_AUTH_TOKEN to mint call tokens", file=sys.stderr)
            return 2
        from .transport.auth import mint_call_token

        context = dict(item.partition("=")[::2] for item in args.context)
        try:
            print(mint_call_token(config.security.auth_token, args.ttl, context=context or None))
        except ValueError as exc:
            print(f"voicepeer: {exc}", file=sys.stderr)
            return 2
        return 0

    from .transport.app import create_app
    from .transport.drain import serve

    server = config.server
    print(f"voicepeer: loading models, then serving http://{server.host}:{server.port}/", flush=True)
    return asyncio.run(serve(create_app(config), server.host, server.port, server.drain_s))


if __name__ == "__main__":
    sys.exit(main())
