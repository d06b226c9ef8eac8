"""A real headless Firefox (Debian's ESR) with a real microphone: a private PulseAudio daemon.

Playwright's Python Firefox is a patched build that has to be downloaded, so Firefox is driven by
puppeteer-core over WebDriver BiDi instead (``tests/js/firefox_page.mjs``, installed by ``make test``).
``FirefoxPage`` gives that driver the few methods of Playwright's ``Page`` that the Chromium helpers in
``tests/support/browser.py`` call (``goto``, ``click``, ``evaluate``, ``wait_for_function``...), so the
same helpers, and the same observers and level recorders, drive both browsers.

Firefox has no file-backed fake microphone like Chromium's ``--use-file-for-fake-audio-capture``; its
fake device is a tone. Its microphone here is a real capture device instead: a PulseAudio daemon of the
test's own (null sinks, a socket in a temporary directory) whose default source is a virtual microphone
fed by a null sink, ``mic``. Playing a WAV into ``mic`` with ``paplay`` (``PulseAudio.play``) is then
heard by ``getUserMedia`` as a person speaking into it. Capturing a real device also matters for the
call itself: only then does Firefox put its host addresses in the offer's ICE candidates instead of
mDNS ``.local`` names. The bot's voice plays into another null sink, ``speaker``, so it never reaches
the microphone.

A real-time capture has a price a file does not: a starved Firefox drops the microphone's samples. So,
when the test may (as root), Firefox runs at the server's media-path priority and its audio threads
real-time, as rtkit makes them on a desktop (``BROWSER_NICE``, ``FirefoxPage.realtime_audio``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "js" / "firefox_page.mjs"
PUPPETEER = ROOT / "tests" / "js" / "node_modules" / "puppeteer-core"
FIREFOX = (
    os.environ.get("VOICEPEER_FIREFOX")
    or shutil.which("firefox-esr")
    or shutil.which("firefox")
    or "/usr/bin/firefox-esr"
)

FIREFOX_PREFS: dict[str, Any] = {
    # getUserMedia answers without a permission prompt (nobody is there to click it)...
    "media.navigator.permission.disabled": True,
    # ...with the real default capture device, not Firefox's fake tone generator.
    "media.navigator.streams.fake": False,
    # The audio goes through PulseAudio (the test's daemon) or fails: never a silent fallback.
    "media.cubeb.backend": "pulse",
    # The page's <audio autoplay> plays the bot's voice without a user gesture.
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
}

SAMPLE_RATE = 48_000

MICROPHONE = "microphone"
"""The virtual microphone's name and description: the label of the track getUserMedia gives."""

LOG_TAIL_LINES = 80

BROWSER_NICE = -5
"""Firefox's nice level when the test may raise it: the server's media path runs at the same."""

AUDIO_THREADS = ("AudioIP", "GraphRunner", "threaded-ml")
"""Firefox's audio threads by name (``comm``, 15 characters): AudioIPC's callback and RPC threads (the
media graph runs on the callback in the content process), the graph's runner, and libpulse's mainloop."""

AUDIO_RT_PRIORITY = 5
"""SCHED_RR priority for them: PulseAudio's own (and rtkit's usual grant)."""

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies (Linux)."""


def missing_tools() -> list[str]:
    """What this module needs that the machine lacks (``make test`` installs all of it)."""
    tools = {
        "firefox-esr": Path(FIREFOX).exists(),
        "pulseaudio": shutil.which("pulseaudio") is not None,
        "paplay": shutil.which("paplay") is not None,
        "node": shutil.which("node") is not None,
        "puppeteer-core (npm ci --prefix tests/js)": PUPPETEER.exists(),
    }
    return [name for name, present in tools.items() if not present]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL, so that a
    daemon told never to exit on its own (``--exit-idle-time=-1``) does not outlive a killed run."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _audio_priority() -> None:
    """In the driver's child before exec (Firefox inherits it): the server's media path's priority.

    On a desktop, Firefox's audio threads get real-time scheduling from rtkit over D-Bus; here there
    is no D-Bus, and a capture thread starved by a loaded machine loses the microphone's samples
    (whole words of the question). Raising it needs root (or CAP_SYS_NICE); without, it stays as is."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, BROWSER_NICE)


def _stop(proc: subprocess.Popen[bytes], timeout: float, *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; ``group``: the whole process group it leads."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait()


class PulseAudio:
    """A private PulseAudio daemon: a virtual microphone (fed by the ``mic`` sink) as the default
    source, and a ``speaker`` null sink as the default sink.

    It runs in the foreground as a child of the test, on a socket in its own directory, with its
    state, cookie and runtime files there too: nothing of the machine's own audio setup (or lack of
    one) is used or changed, and running as root works (the daemon only warns)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "native"
        self.log_path = directory / "pulseaudio.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._players: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        """The environment for the daemon's clients (Firefox, paplay): this daemon, never autospawn."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_RUNTIME_PATH": str(self.dir / "runtime"),
            "PULSE_STATE_PATH": str(self.dir / "state"),
            "PULSE_COOKIE": str(self.dir / "cookie"),
            "PULSE_CLIENTCONFIG": str(self.dir / "client.conf"),
        }

    def __enter__(self) -> PulseAudio:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "client.conf").write_text("autospawn = no\n")
        script = self.dir / "default.pa"
        script.write_text(
            "\n".join(
                [
                    f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1",
                    f"load-module module-null-sink sink_name=mic rate={SAMPLE_RATE} channels=1"
                    " sink_properties=device.description=mic-feed",
                    f"load-module module-null-sink sink_name=speaker rate={SAMPLE_RATE} channels=2"
                    " sink_properties=device.description=speaker",
                    # A source of its own, not a monitor: what a microphone is to the browser.
                    f"load-module module-remap-source source_name={MICROPHONE} master=mic.monitor"
                    f" source_properties=device.description={MICROPHONE}",
                    "set-default-sink speaker",
                    f"set-default-source {MICROPHONE}",
                    "",
                ]
            )
        )
        env = {
            **os.environ,
            **self.env(),
            "HOME": str(self.dir),
            "XDG_CONFIG_HOME": str(self.dir / "config"),
            "XDG_RUNTIME_DIR": str(self.dir / "runtime"),
        }
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                "pulseaudio",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--system=no",
                "--disallow-exit",
                "--disallow-module-loading=no",
                "--log-target=stderr",
                "-n",
                "-F",
                str(script),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self.proc.returncode}:\n{self.log()}")
            done = self.pactl("get-default-source", check=False)
            if done.returncode == 0 and done.stdout.strip() == MICROPHONE:
                return
            time.sleep(0.2)
        raise TimeoutError(f"pulseaudio not ready in {timeout} s:\n{self.log()}")

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pactl", *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            check=check,
            timeout=15,
        )

    def play(self, wav: Path, *, wait: bool = True, timeout: float = 120.0) -> subprocess.Popen[bytes]:
        """Speaks ``wav`` into the microphone (plays it into the ``mic`` sink); ``wait``: until it ends."""
        player = subprocess.Popen(
            ["paplay", "--device=mic", str(wav)],
            env={**os.environ, **self.env()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._players.append(player)
        if wait:
            _, err = player.communicate(timeout=timeout)
            if player.returncode != 0:
                why = err.decode(errors="replace")
                raise RuntimeError(f"paplay {wav} failed ({player.returncode}): {why}")
        return player

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        for player in self._players:
            _stop(player, 5)
        if self.proc is not None:
            _stop(self.proc, 10, group=True)
        if hasattr(self, "_log"):
            self._log.close()


class FirefoxPage:
    """The subset of Playwright's ``Page`` that ``tests/support/browser.py`` uses, on a headless Firefox
    driven by ``tests/js/firefox_page.mjs`` (puppeteer-core, WebDriver BiDi).

    ``evaluate`` follows Playwright: a string that is a function is called with the argument, any other
    is the expression's value; results come back as JSON values."""

    def __init__(
        self, proc: subprocess.Popen[bytes], lines: queue.Queue[str | None], pid: int | None
    ) -> None:
        self._proc = proc
        self._lines = lines
        self._next_id = 0
        self.firefox_pid = pid

    def _call(self, method: str, timeout_s: float = 60.0, **params: Any) -> Any:
        self._next_id += 1
        request = {"id": self._next_id, "method": method, "params": params}
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps(request) + "\n").encode())
        self._proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the Firefox driver did not answer {method} in {timeout_s} s") from None
            if line is None:
                raise RuntimeError(f"the Firefox driver exited ({self._proc.poll()}) during {method}")
            answer = _message(line)
            if answer.get("id") != self._next_id:
                continue
            if "error" in answer:
                if answer["error"].startswith("TimeoutError"):
                    raise TimeoutError(answer["error"])
                raise RuntimeError(f"{method}: {answer['error']}")
            return answer["result"]

    def add_init_script(self, script: str) -> None:
        self._call("add_init_script", script=script)

    def goto(self, url: str, timeout: float = 60_000) -> None:
        self._call("goto", timeout / 1000 + 10, url=url, timeout=timeout)

    def click(self, selector: str) -> None:
        self._call("click", selector=selector)

    def set_checked(self, selector: str, checked: bool) -> None:
        self._call("set_checked", selector=selector, checked=checked)

    def fill(self, selector: str, value: str) -> None:
        self._call("fill", selector=selector, value=value)

    def text_content(self, selector: str) -> str | None:
        return self._call("text_content", selector=selector)

    def evaluate(self, source: str, arg: Any = None) -> Any:
        return self._call("evaluate", source=source, arg=arg)

    def wait_for_function(self, expression: str, timeout: float = 30_000) -> None:
        self._call("wait_for_function", timeout / 1000 + 30, expression=expression, timeout=timeout)

    def realtime_audio(self) -> int:
        """Gives Firefox's audio threads real-time scheduling, as rtkit does on a desktop; returns how
        many threads got it (0 without root or CAP_SYS_NICE: the call then runs as it is).

        Call it once the microphone is open (its threads exist from then on). On a loaded machine a
        starved capture drops whole stretches of the question (a third of it with other calls running
        on the same 2 cores), which no retry or margin in the test would make a fair check of the
        server; the desktop that the test stands for has these threads real-time."""
        if self.firefox_pid is None:
            return 0
        promoted = 0
        for task in _group_tasks(self.firefox_pid):
            with contextlib.suppress(OSError):
                if task.joinpath("comm").read_text().startswith(AUDIO_THREADS):
                    os.sched_setscheduler(int(task.name), os.SCHED_RR, os.sched_param(AUDIO_RT_PRIORITY))
                    promoted += 1
        return promoted

    def close(self) -> None:
        """Closes Firefox through the driver (which then exits)."""
        with contextlib.suppress(Exception):
            self._call("close", 30)


@contextlib.contextmanager
def firefox_page(pulse: PulseAudio, directory: Path) -> Iterator[FirefoxPage]:
    """A fresh headless Firefox (own profile in ``directory``) whose microphone and loudspeaker are
    ``pulse``'s, with the Chromium helpers' events observer (``browser.OBSERVER_JS``) installed.

    Everything it started is gone afterwards, whatever happened: Firefox (and its content processes,
    one process group) and the Node driver."""
    from tests.support.browser import OBSERVER_JS

    missing = missing_tools()
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)}: run `make test`, which installs them")
    directory.mkdir(parents=True, exist_ok=True)
    # Firefox's profile, HOME (its caches) and TMPDIR (the driver's files): ~40 MB, removed afterwards.
    home = Path(tempfile.mkdtemp(prefix="home-", dir=directory))
    options = {
        "executablePath": FIREFOX,
        "userDataDir": str(home / "profile"),
        "prefs": FIREFOX_PREFS,
    }
    env = {
        **os.environ,
        **pulse.env(),
        "HOME": str(home),
        "TMPDIR": str(home),
        "MOZ_HEADLESS": "1",
    }
    log = open(directory / "firefox.log", "wb")
    proc = subprocess.Popen(
        ["node", str(DRIVER), json.dumps(options)],
        cwd=DRIVER.parent,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
        preexec_fn=_audio_priority,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    firefox_pid: int | None = None
    try:
        deadline = time.monotonic() + 180
        ready: dict[str, Any] = {}
        while not ready.get("ready"):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"Firefox did not start in 180 s:\n{firefox_log(directory)}") from None
            if line is None:
                raise RuntimeError(f"the Firefox driver exited ({proc.wait()}):\n{firefox_log(directory)}")
            ready = _message(line)
        firefox_pid = ready.get("pid")
        page = FirefoxPage(proc, lines, firefox_pid)
        page.add_init_script(OBSERVER_JS)
        yield page
        page.close()
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            if proc.stdin is not None:
                proc.stdin.close()  # the driver closes Firefox when its input ends
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        _stop(proc, 10, group=True)
        if firefox_pid is not None and _is_firefox(firefox_pid):
            # Puppeteer starts Firefox as the leader of its own process group: whatever is left of it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(firefox_pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _message(line: str) -> dict[str, Any]:
    """A line of the driver's protocol; anything else that reached its stdout (a library's warning)
    is not one, and is skipped as an empty message."""
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def _group_tasks(group: int) -> list[Path]:
    """The threads (``/proc/PID/task/TID``) of every process in process group ``group``."""
    tasks: list[Path] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Fields after the command's closing parenthesis: state, ppid, pgrp.
            if int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                tasks.extend(proc.joinpath("task").iterdir())
    return tasks


def _is_firefox(pid: int) -> bool:
    """Whether ``pid`` is still the Firefox this module started (a closed one's pid may be reused)."""
    try:
        return "firefox" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def firefox_log(directory: Path) -> str:
    """Firefox's and the driver's output (the page's console too), for a failing test's message."""
    path = directory / "firefox.log"
    return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def logs_on_failure(**logs: Callable[[], str]) -> Iterator[None]:
    """Prints the named logs' last lines when the block fails: what Firefox, PulseAudio and the
    server said is then in the failing test's captured output, not lost with its temporary files."""
    try:
        yield
    except BaseException:
        for name, read in logs.items():
            with contextlib.suppress(Exception):
                tail = "\n".join(read().splitlines()[-LOG_TAIL_LINES:])
                print(f"----- {name} (last {LOG_TAIL_LINES} lines) -----\n{tail}")
        raise
