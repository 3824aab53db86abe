"""``spotrain emulate``: run a job on an emulated multi-node cluster while faults hit it.

The emulator plays the role of the spot fleet and of the CronJob around ``spotrain run``: it
starts an :class:`~cluster.chaos.emulated_cluster.EmulatedCluster`, runs ``spotrain run JOB
--address`` as a child process (the driver), fires the scheduled faults at their times, and
starts the driver again whenever it ends without finishing (preempted, held, killed), as a
CronJob would. It prints a timeline as it goes and returns what happened for the final report.

Fault times count from the moment the first training workers are up, so that a slow start
(Ray, TensorFlow import) does not eat the schedule. A fault that needs a training worker
(kill-worker) or the driver (kill-driver) is held back, up to ``target_wait_s``, while its
target restarts; the loop goes on restarting the driver meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cluster.chaos.emulated_cluster import EmulatedCluster, EmulationError
from cluster.chaos.schedule import Fault, FaultKind
from cluster.exit_codes import ExitCode

logger = logging.getLogger(__name__)

#: Driver exits after which the emulator starts ``spotrain run`` again, as a CronJob would.
RESTARTABLE_EXITS = frozenset(
    {ExitCode.PREEMPTED, ExitCode.HELD, ExitCode.INFRA_ERROR, -signal.SIGKILL, -signal.SIGTERM}
)


@dataclass(frozen=True)
class TimelineEntry:
    at_s: float
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"[{self.at_s:7.1f}s] {self.what:<14} {self.detail}".rstrip()


@dataclass(frozen=True)
class InjectedFault:
    fault: Fault
    at_s: float  # seconds since the emulation started
    wall_time: float  # unix time, to line up with the run record's events
    target: str = ""
    skipped: str = ""  # why the fault could not be injected (e.g. no worker alive)


@dataclass
class EmulationResult:
    exit_code: int
    wall_s: float
    driver_starts: int
    faults: list[InjectedFault] = field(default_factory=list)
    timeline: list[TimelineEntry] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == ExitCode.OK


@dataclass
class EmulatorOptions:
    """Settings of one emulation.

    Attributes:
        nodes: worker raylets; each offers ``cpus_per_node`` CPUs (one worker).
        driver_args: extra ``spotrain run`` arguments (e.g. ``["--workers", "2"]``).
        driver_env: extra environment for the driver (e.g. a short ``SPOTRAIN_LEASE_TTL_S`` so
            a killed driver's lease lapses quickly).
        restart_delay_s: pause before starting the driver again (a CronJob's period, shrunk).
        target_wait_s: how long a due kill-worker / kill-driver waits for its target to exist.
        timeout_s: give up (and kill the driver) after this long.
        poll_s: how often the loop checks the driver and the schedule.
        clock_ready: when given, the fault clock starts only once it also returns True (the
            CLI's ``--clock training``: once the run committed its first checkpoint).
    """

    nodes: int = 2
    cpus_per_node: int = 1
    driver_args: Sequence[str] = ()
    driver_env: dict[str, str] = field(default_factory=dict)
    restart_delay_s: float = 1.0
    target_wait_s: float = 60.0
    timeout_s: float = 900.0
    poll_s: float = 0.2
    clock_ready: Callable[[], bool] | None = None


class Emulator:
    """Runs ``job_path`` under ``faults``; :meth:`run` returns an :class:`EmulationResult`."""

    def __init__(
        self,
        job_path: str,
        faults: Sequence[Fault],
        options: EmulatorOptions | None = None,
        *,
        echo: Callable[[str], None] = print,
    ):
        self.job_path = job_path
        self.faults = sorted(faults, key=lambda f: f.at_s)
        self.options = options or EmulatorOptions()
        self._echo = echo
        self._start = 0.0  # monotonic time the emulation began
        self._zero: float | None = None  # monotonic time the first training workers were up
        self._result = EmulationResult(exit_code=-1, wall_s=0.0, driver_starts=0)

    def run(self) -> EmulationResult:
        opts = self.options
        with EmulatedCluster(opts.nodes, cpus_per_node=opts.cpus_per_node) as cluster:
            import ray

            ray.init(address=cluster.address, logging_level=logging.WARNING)
            try:
                self._drive(cluster)
            finally:
                ray.shutdown()
        return self._result

    # the loop ------------------------------------------------------------------------------
    def _drive(self, cluster: EmulatedCluster) -> None:
        opts = self.options
        self._start = time.monotonic()
        pending = list(self.faults)
        driver: subprocess.Popen[bytes] | None = self._start_driver(cluster)
        restart_at: float | None = None
        while True:
            now = self._elapsed()
            if driver is not None and (code := driver.poll()) is not None:
                self._note("driver-exit", f"code {code} ({_exit_name(code)})")
                driver = None
                if code == ExitCode.OK or code not in RESTARTABLE_EXITS:
                    self._result.exit_code = code
                    break
                restart_at = now + opts.restart_delay_s
            if driver is None and restart_at is not None and now >= restart_at:
                driver, restart_at = self._start_driver(cluster), None
            if self._zero is None and cluster.train_worker_pids() and self._clock_ready():
                self._zero = time.monotonic()
                self._note("workers-up", "fault clock starts")
            while pending and self._zero is not None and pending[0].at_s <= self._since_zero():
                late_s = self._since_zero() - pending[0].at_s
                if not self._target_ready(pending[0], cluster, driver) and (
                    late_s < opts.target_wait_s
                ):
                    break  # its target (a worker, the driver) is restarting: try next poll
                killed = self._inject(pending.pop(0), cluster, driver)
                if killed:
                    driver = None
                    restart_at = self._elapsed() + opts.restart_delay_s
            if now > opts.timeout_s:
                self._note("timeout", f"gave up after {opts.timeout_s:g}s")
                if driver is not None:
                    driver.kill()
                    driver.wait()
                self._result.exit_code = ExitCode.INFRA_ERROR
                break
            time.sleep(opts.poll_s)
        for fault in pending:
            self._result.faults.append(
                InjectedFault(fault, self._elapsed(), time.time(), skipped="run ended first")
            )
        self._result.wall_s = self._elapsed()

    def _start_driver(self, cluster: EmulatedCluster) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "cluster",
            "run",
            self.job_path,
            "--address",
            cluster.address,
            *self.options.driver_args,
        ]
        env = {**os.environ, "RAY_ADDRESS": cluster.address, **self.options.driver_env}
        self._result.driver_starts += 1
        self._note("driver-start", f"#{self._result.driver_starts}")
        return subprocess.Popen(cmd, env=env)

    def _inject(
        self, fault: Fault, cluster: EmulatedCluster, driver: subprocess.Popen[bytes] | None
    ) -> bool:
        """Fire one fault; returns True when it killed the driver."""
        at_s, wall = self._elapsed(), time.time()
        target, skipped = "", ""
        try:
            if fault.kind is FaultKind.KILL_WORKER:
                target = f"pid {cluster.kill_worker()}"
            elif fault.kind is FaultKind.DRAIN_NODE:
                node = cluster.drain_node(fault.deadline_s or 0.0)
                target = f"node {node[:8]} (deadline {fault.deadline_s:g}s)"
            elif fault.kind is FaultKind.KILL_NODE:
                target = f"node {cluster.kill_node()[:8]}"
            elif fault.kind is FaultKind.ADD_NODE:
                target = f"node {cluster.add_node()[:8]}"
            elif fault.kind is FaultKind.KILL_DRIVER:
                if driver is None:
                    skipped = "no driver running"
                else:
                    driver.send_signal(signal.SIGKILL)
                    driver.wait()
                    target = f"pid {driver.pid}"
        except EmulationError as exc:
            skipped = str(exc)
        # timed from the blow itself, not from the look-ups that chose its target
        struck = cluster.struck_at
        if struck is not None and struck > wall:
            at_s, wall = at_s + (struck - wall), struck
        self._result.faults.append(InjectedFault(fault, at_s, wall, target, skipped))
        self._note(fault.kind.value, f"skipped: {skipped}" if skipped else target)
        return fault.kind is FaultKind.KILL_DRIVER and not skipped

    def _clock_ready(self) -> bool:
        ready = self.options.clock_ready
        return ready is None or ready()

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def _since_zero(self) -> float:
        return 0.0 if self._zero is None else time.monotonic() - self._zero

    @staticmethod
    def _target_ready(
        fault: Fault, cluster: EmulatedCluster, driver: subprocess.Popen[bytes] | None
    ) -> bool:
        if fault.kind is FaultKind.KILL_WORKER:
            return bool(cluster.train_worker_pids())
        if fault.kind is FaultKind.KILL_DRIVER:
            return driver is not None
        return True

    def _note(self, what: str, detail: str = "") -> None:
        entry = TimelineEntry(self._elapsed(), what, detail)
        self._result.timeline.append(entry)
        self._echo(entry.line())


def _exit_name(code: int) -> str:
    if code < 0:
        return signal.Signals(-code).name
    try:
        return ExitCode(code).name
    except ValueError:
        return "unknown"
