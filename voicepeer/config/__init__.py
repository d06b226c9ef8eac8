"""Run-time configuration, shared by the CLI, the server, the calls and the tests.

``Config`` is made of sections (``config.server``, ``config.llm``, ...) whose fields are the options,
each declared once (``network.py``, ``speech.py``); ``OPTIONS`` lists them for the CLI, the ``config``
control command and the docs (``python -m voicepeer.config --markdown > docs/configuration.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from .app import AppConfig
from .network import TALKING_CALLS_PER_CORE, IceConfig, SecurityConfig, ServerConfig, default_max_sessions
from .option import ENV_PREFIX, Declared, Live, Option, declared, option, parse_bool
from .speech import ASRConfig, AudioConfig, LLMConfig, TTSConfig, TurnsConfig


@dataclass(frozen=True)
class Config:
    """Everything the server, a call and the CLI are configured with; ``Config()`` is the defaults.

    Tests and embedders build it by section (``Config(llm=LLMConfig(timeout_s=1.0))``) or change a
    few options of one (``config.with_options({"llm.timeout_s": 1.0})``)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    turns: TurnsConfig = field(default_factory=TurnsConfig)
    app: AppConfig = field(default_factory=AppConfig)

    def with_options(self, values: Mapping[str, object]) -> Config:
        """A copy with the options named by path (``"llm.max_tokens"``) changed."""
        by_section: dict[str, dict[str, object]] = {}
        for path, value in values.items():
            section, name = path.split(".")
            by_section.setdefault(section, {})[name] = value
        return dataclasses.replace(
            self,
            **{
                section: dataclasses.replace(getattr(self, section), **fields)
                for section, fields in by_section.items()
            },
        )


OPTIONS: tuple[Declared, ...] = declared(Config)
"""Every option, in the order of the sections and their fields."""

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "TALKING_CALLS_PER_CORE",
    "ASRConfig",
    "AppConfig",
    "AudioConfig",
    "Config",
    "Declared",
    "IceConfig",
    "LLMConfig",
    "Live",
    "Option",
    "SecurityConfig",
    "ServerConfig",
    "TTSConfig",
    "TurnsConfig",
    "default_max_sessions",
    "option",
    "parse_bool",
]
