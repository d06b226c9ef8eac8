"""voicepeer's media peer: sessions, tracks, the speech path and the conversation."""

from .runtime import models as _models  # noqa: F401  (sets the hubs' offline switches before anything loads)

__version__ = "0.1.0"
