"""Giving the memory that the model runtimes free back to the system.

Piper's ONNX graph and Whisper's encoder allocate buffers sized by each sentence or turn, in whichever
worker thread runs them, and glibc keeps what they free in that thread's arena for reuse. Over
hundreds of calls the process kept every size it had ever needed, in every arena: 150 syntheses by
three threads took Piper from 255 to 430-640 MB; trimming after each kept it at 215-265 MB (the
soak in ``bench/soak.py`` is the long version of this). ``malloc_trim`` walks the arenas and returns
their free pages; it takes ~11 ms here, so ``workers.IdleTrim`` runs it when inference goes idle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

from .stalls import stall_clock

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators return memory themselves
        fn = None
    if fn is None:
        log.debug("malloc_trim is not available; freed native memory stays with the allocator")
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def release_free_memory() -> None:
    """Returns the allocator's free pages to the system. Blocking but short; call it from the worker
    thread that just finished an inference, not from the event loop."""
    fn = _malloc_trim()
    if fn is not None:
        with stall_clock().pause("trim"):
            fn(0)


def freeze_loaded_heap() -> int:
    """Moves every object alive now (the loaded models' Python side, tokenizers, imported modules) out
    of the garbage collector's reach, and returns how many.

    A full collection stops the whole interpreter, the event loop included, for as long as it takes to
    walk every tracked object. Once the models were loaded the server tracked ~82,000 objects that live
    as long as the process; a full pass over them took 20-80 ms with Chromium on the same two cores,
    the outbound track released no frame meanwhile, and the listener heard a gap. Frozen, the pass walks
    only what calls create (~5,000 objects). Reference counting still frees a frozen object; only a
    reference cycle among them would stay, so this is for what is loaded once per process.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
