"""`make run` as a new user meets it: one ready line naming the port it serves, every way of stopping it stops
everything it started, and a busy port is one line, not a traceback.

Each `make run` here runs on free ports, in a session of its own (so that its process group can get the
terminal's Ctrl-C), with the venv and model that exist (`make -o` keeps make from rebuilding them) and TMPDIR
in the test's tmp_path (where gunicorn makes its metrics directory). Whatever happens, the whole group is
killed when the test ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.environ import clean_environ
from tests.support.servers import BIN, ROOT, curve_keys, ensure_model, free_port, http_status, model_server

pytestmark = pytest.mark.integration

READY = re.compile(r"^zerolens is ready: open http://localhost:(\d+)$", re.MULTILINE)
READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = (
    35  # the servers drain for up to 25-30 s with requests in flight; idle they stop in about 1 s
)
GONE_TIMEOUT_S = 10  # a gunicorn worker whose master died notices within a second or two
POLL_S = 0.05


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return ""


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def _group(pgid: int) -> list[int]:
    """Every live process of process group `pgid`, orphans included (they keep their group)."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


@dataclass
class MakeRun:
    """One `make run`, its output files, and the processes it had once ready (pid → start time)."""

    proc: subprocess.Popen
    ports: dict[str, int]
    tmp: Path
    started: dict[int, str] = field(default_factory=dict)

    def stdout(self) -> str:
        return (self.tmp / "stdout").read_text(errors="replace")

    def output(self) -> str:
        """stdout and stderr together, as a terminal shows them."""
        return self.stdout() + (self.tmp / "stderr").read_text(errors="replace")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> re.Match[str]:
        """The ready line, once printed; records the processes running then."""
        deadline = time.monotonic() + timeout_s
        while not (ready := READY.search(self.stdout())):
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = self.proc.wait(POLL_S)
                pytest.fail(f"make run exited with {status} before it was ready:\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no ready line after {timeout_s} s:\n{self.output()[-4000:]}")
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            if fields := _stat(pid):
                self.started[pid] = fields[19]
        return ready

    def pid_of(self, text: str) -> int:
        """The recorded process whose command line contains `text`."""
        (pid,) = [pid for pid in self.started if text in _cmdline(pid)]
        return pid

    def remaining(self) -> list[str]:
        """Its recorded processes still running (same pid, same start time), and any left in its group."""
        alive = {
            pid for pid, start in self.started.items() if (f := _stat(pid)) and f[0] != "Z" and f[19] == start
        }
        alive |= set(_group(self.proc.pid))
        return [f"{pid} {_cmdline(pid)}" for pid in sorted(alive)]

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make run still ran {timeout_s} s later:\n{self.output()[-4000:]}")

    def assert_all_gone(self, metrics_dir_removed: bool = True) -> None:
        """Nothing it started still runs or holds a port, within GONE_TIMEOUT_S; no metrics directory left."""
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while (left := self.remaining()) or any(_port_in_use(p) for p in self.ports.values()):
            if time.monotonic() > deadline:
                held = [name for name, p in self.ports.items() if _port_in_use(p)]
                pytest.fail(f"still running: {left}; ports still held: {held}\n{self.output()[-4000:]}")
            time.sleep(POLL_S)
        if metrics_dir_removed:
            assert not list(self.tmp.glob("zerolens-prometheus-*")), (
                "the web tier's metrics directory is left"
            )

    def kill(self) -> None:
        """The safety net: SIGKILL to its group and to every process recorded."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid, start in self.started.items():
            if (fields := _stat(pid)) and fields[19] == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[..., MakeRun]]:
    """Start `make run` on free ports (or `ports`), with `make_vars` and `env` on top; killed at the end."""
    runs: list[MakeRun] = []
    model_dir = ensure_model()
    keys_dir = curve_keys(tmp_path)

    def start(ports: dict[str, int] | None = None, make_vars: bool = True, **env: str) -> MakeRun:
        ports = ports or {"web": free_port(), "model": free_port(), "health": free_port()}
        tmp = tmp_path / f"run-{len(runs)}"
        tmp.mkdir()
        environ = clean_environ(ZEROLENS_CURVE_KEYS_DIR=str(keys_dir), TMPDIR=str(tmp), **env)
        for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "WEB_PORT", "MODEL_PORT", "HEALTH_PORT"):
            environ.pop(name, None)  # from a make or a shell around the tests
        argv = [
            "make",
            "-s",
            "-o",
            f"{model_dir}/manifest.json",
            "run",
            f"BIN={BIN}",
            f"MODEL_DIR={model_dir}",
        ]
        if make_vars:
            argv += [
                f"WEB_PORT={ports['web']}",
                f"MODEL_PORT={ports['model']}",
                f"HEALTH_PORT={ports['health']}",
            ]
        with open(tmp / "stdout", "wb") as out, open(tmp / "stderr", "wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        runs.append(MakeRun(proc, ports, tmp))
        return runs[-1]

    try:
        yield start
    finally:
        for run in runs:
            run.kill()


def _stop_by_ctrl_c(run: MakeRun) -> None:
    os.killpg(run.proc.pid, signal.SIGINT)  # what the terminal sends its foreground process group


def _stop_by_sigterm_to_make(run: MakeRun) -> None:
    os.kill(run.proc.pid, signal.SIGTERM)  # an IDE, a supervisor, `timeout`: make alone


def _stop_by_sigterm_to_script(run: MakeRun) -> None:
    os.kill(run.pid_of("scripts/run.sh"), signal.SIGTERM)


def _stop_by_sighup_to_script(run: MakeRun) -> None:
    os.kill(run.pid_of("scripts/run.sh"), signal.SIGHUP)  # its terminal closed


def _stop_by_sigkill_to_script(run: MakeRun) -> None:
    os.kill(run.pid_of("scripts/run.sh"), signal.SIGKILL)  # no trap runs: the servers must notice alone


@pytest.mark.parametrize(
    "stop",
    [
        _stop_by_ctrl_c,
        _stop_by_sigterm_to_make,
        _stop_by_sigterm_to_script,
        _stop_by_sighup_to_script,
        _stop_by_sigkill_to_script,
    ],
    ids=lambda stop: stop.__name__.removeprefix("_stop_by_"),
)
def test_every_way_of_stopping_make_run_stops_everything(
    make_run: Callable[..., MakeRun], stop: Callable[[MakeRun], None]
) -> None:
    run = make_run()
    ready = run.wait_ready()
    assert int(ready.group(1)) == run.ports["web"]
    assert http_status(f"http://127.0.0.1:{run.ports['web']}/readyz") == 200  # ready means ready
    assert len(run.started) >= 5, run.remaining()  # make, the script, the model server, gunicorn and workers
    stop(run)
    run.wait_exit()
    # A SIGKILL leaves the script no time to remove the metrics directory it made (as scripts/run.sh says).
    run.assert_all_gone(metrics_dir_removed=stop is not _stop_by_sigkill_to_script)
    output = run.output()
    assert "Traceback" not in output
    if stop is not _stop_by_sigkill_to_script:  # the script's own stop ran, not its "a server exited" path
        assert "zerolens: stopping" in output and "exited with status" not in output, output


@pytest.mark.parametrize("tier", ["the model server", "the web tier"])
def test_when_one_server_dies_the_other_is_stopped_and_make_run_fails(
    make_run: Callable[..., MakeRun], tier: str
) -> None:
    run = make_run()
    run.wait_ready()
    script = run.pid_of("scripts/run.sh")
    command = "-m services.model" if tier == "the model server" else "bin/gunicorn"
    # the server itself: the model server, or gunicorn's master (not one of its workers)
    (server,) = [pid for pid in run.started if command in _cmdline(pid) and int(_stat(pid)[1]) == script]
    os.kill(server, signal.SIGKILL)
    assert run.wait_exit() != 0
    run.assert_all_gone()
    assert f"zerolens: {tier} exited" in run.output()


@pytest.mark.parametrize("busy", ["web", "model", "health"])
def test_a_busy_port_is_one_line_and_starts_nothing(make_run: Callable[..., MakeRun], busy: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports = {"web": free_port(), "model": free_port(), "health": free_port()}
        ports[busy] = holder.getsockname()[1]
        run = make_run(ports)
        status = run.wait_exit(60)
        output = run.output()
        assert status != 0
        mentions = [line for line in output.splitlines() if str(ports[busy]) in line]
        variable = {"web": "WEB_PORT", "model": "MODEL_PORT", "health": "HEALTH_PORT"}[busy]
        assert len(mentions) == 1, output
        assert f"port {ports[busy]} " in mentions[0] and f"make run {variable}=" in mentions[0], output
        assert "Traceback" not in output and not READY.search(output)
        assert not _group(run.proc.pid)
        assert not list(run.tmp.glob("zerolens-prometheus-*"))


def test_the_ready_line_names_the_port_set_by_zerolens_settings(make_run: Callable[..., MakeRun]) -> None:
    ports = {"web": free_port(), "model": free_port(), "health": free_port()}
    run = make_run(
        ports,
        make_vars=False,
        ZEROLENS_WEB_BIND=f"127.0.0.1:{ports['web']}",
        ZEROLENS_PORT=str(ports["model"]),
        ZEROLENS_HEALTH_PORT=str(ports["health"]),
    )
    assert int(run.wait_ready().group(1)) == ports["web"]
    assert http_status(f"http://127.0.0.1:{ports['health']}/readyz") == 200
    os.kill(run.proc.pid, signal.SIGTERM)
    run.wait_exit()
    run.assert_all_gone()


@pytest.mark.parametrize("busy", ["port", "health_port"])
def test_the_model_server_says_in_one_line_that_its_port_is_taken(tmp_path: Path, busy: str) -> None:
    """Without make run's check in front (a port taken in between): one line and status 2, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = model_server(tmp_path, **{busy: port})
        assert server.run_to_exit(timeout_s=120) == 2
    log = server.log_path.read_text()
    assert "Traceback" not in log
    mentions = [line for line in log.splitlines() if str(port) in line]
    assert len(mentions) == 1 and f"port {port} is in use" in mentions[0], log


def test_gunicorn_says_in_one_line_that_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = clean_environ(
            ZEROLENS_WEB_BIND=f"127.0.0.1:{port}",
            ZEROLENS_CURVE_KEYS_DIR=str(curve_keys(tmp_path)),
            TMPDIR=str(tmp_path),
        )
        argv = [str(BIN / "gunicorn"), "-c", "services/web/gunicorn.conf.py", "services.web:create_app()"]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in output
    assert [line for line in output.splitlines() if str(port) in line] == [
        f"port {port} is in use; stop what holds it or choose another (ZEROLENS_WEB_BIND)"
    ], output
    assert not list(tmp_path.glob("zerolens-prometheus-*"))
