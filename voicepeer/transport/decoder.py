"""The inbound decoder's thread, on the media path's priority.

aiortc decodes each received Opus packet in a thread of its own per receiver, started from the event
loop when media begins; a thread the loop makes is an ordinary one (``runtime.priorities``). Its Python
holds the interpreter lock 50 times a second per call, and an ordinary thread that the kernel takes off
its core while holding it keeps the event loop waiting, however high the loop's own priority: in a
loaded room (seven browser calls and two more talkers on two cores) such waits made 14 frames of the
bot's voice 50 ms late or more, none with the decoders raised. aiortc keeps the thread in a private
attribute and offers no hook for it.
"""

from __future__ import annotations

import logging

from aiortc.rtcrtpreceiver import RTCRtpReceiver

from ..runtime.priorities import raise_helper_priority

log = logging.getLogger(__name__)


def raise_decoder_priority(receiver: RTCRtpReceiver) -> bool:
    """Puts the receiver's decoder thread on the media helpers' priority; call it once media flows
    (the first decoded frame), when the thread exists. False where it cannot be found."""
    thread = getattr(receiver, "_RTCRtpReceiver__decoder_thread", None)
    native = getattr(thread, "native_id", None)
    if native is None or not thread.is_alive():  # a thread id that ended may be another's now
        log.debug("no decoder thread found on %r: it stays an ordinary thread", receiver)
        return False
    raise_helper_priority(native)
    return True
