"""The coordinator: drives one run through its lifecycle, one transition per :meth:`step`.

It holds the run's lease (renewed by a thread, :mod:`cluster.lease_keeper`), persists every state
and attempt in the run record, runs attempts through the :class:`cluster.attempt.AttemptRunner`
it is given (``spotrain run`` passes Ray's, :mod:`cluster.ray.runner`) and decides RESTART /
RAISE with a :class:`cluster.failure_policy.FailurePolicy`. Tests drive it with a fake runner,
one ``step()`` at a time.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from cluster.attempt import AttemptContext, AttemptRunner, CoordinatorOptions
from cluster.decisions import (
    count_budgets,
    failure_event,
    made_progress,
    ray_raise_payload,
    verdict_from_ray,
)
from cluster.errors import DriverPreempted, reading_run
from cluster.failure_policy import FailurePolicy, classify, options_from_spec
from cluster.lease_keeper import LeaseKeeper
from cluster.spec import JobSpec, absolute_run_url
from cluster.state import (
    Failed,
    Pending,
    Preempted,
    Resuming,
    Running,
    RunState,
    State,
    Succeeded,
    check_transition,
    last_state,
    record_state,
)
from storage import events as run_events
from storage.errors import LeaseHeldError, NoValidCheckpointError, StaleWriterError
from storage.events import Source
from storage.location import RunLocation

logger = logging.getLogger(__name__)


class Coordinator:
    """Drives one run. ``start()`` once, then ``step()`` until :meth:`done`; or just ``run()``."""

    def __init__(
        self,
        spec: JobSpec,
        options: CoordinatorOptions | None,
        runner: AttemptRunner,
        *,
        record: Any = None,
        store: Any = None,
        lease: Any = None,
        location: RunLocation | None = None,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        from storage.checkpoints import CheckpointStore
        from storage.run_record import RunRecord

        self.spec = spec
        self.options = options or CoordinatorOptions()
        #: The run URL as the workers get it (absolute; the worker job carries it as a string).
        self.run_url = absolute_run_url(spec.run_url)
        #: The one location of the run: record, store, lease and the runner all use it. Tests may
        #: pass one (e.g. over a fault-injecting filesystem).
        self.location = (
            location
            if location is not None
            else RunLocation.from_url(self.run_url, spec.storage_options)
        )
        self.record = record if record is not None else RunRecord(self.location)
        self.store = store if store is not None else CheckpointStore(self.location)
        self._lease = lease
        self.runner = runner
        self.stop_requested = threading.Event()
        self._sleep = sleep or (lambda s: self.stop_requested.wait(s))
        self.state: State = Pending()
        self.policy = FailurePolicy(
            options_from_spec(spec.failures, self.options.backoff_override_s)
        )
        self.attempt = 0
        self._fresh_start = True
        #: A new coordinator on a FAILED run retries it once (the user may have fixed the cause).
        self._resume_failed = False

    # -- lifecycle ---------------------------------------------------------------------------
    def _prefix(self) -> str:
        return f"[run={self.spec.name} attempt={self.attempt}] "

    def start(self) -> State:
        """Check that the run's storage is writable (raises ``PermanentStorageError`` /
        ``TransientStorageError`` with the fix, before anything is written), take the lease
        (raises ``LeaseHeldError``) and load the run's state from storage."""
        self.location.check_writable()
        if self._lease is None:
            self._lease = LeaseKeeper(self.location, self.options, on_lost=self.request_stop)
        self._lease.acquire()
        try:
            self._fence_writers()
            with reading_run(self.location.url):
                return self._load_state()
        except BaseException:
            # a start-up failure after taking the lease must not leave it held: the next
            # `spotrain run` would exit 5, "held by" a process that is gone
            self._lease.release()
            raise

    def _load_state(self) -> State:
        persisted = last_state(self.record)
        if persisted is None or persisted.kind is not RunState.SUCCEEDED:
            # A finished run keeps the spec it ran with (status reads it).
            previous_spec = self.record.read_spec()
            fingerprint = self.record.write_spec(self.spec.to_dict())
            if previous_spec and previous_spec.get("fingerprint") != fingerprint:
                logger.warning(
                    "%sthe job spec changed since the run started; resuming with the new spec",
                    self._prefix(),
                )
        events = self.record.events()
        self.policy.counts.update(count_budgets(events))
        self.attempt = run_events.attempts(events)
        if persisted is None:
            self.state = Pending()
            record_state(self.record, self.state)
        elif persisted.kind in (RunState.RUNNING, RunState.RESUMING):
            # The previous coordinator vanished (its lease expired): a driver preemption.
            latest = self._latest_step()
            run_events.write_preemption(
                self.record,
                attempt=self.attempt,
                failure_kind="preemption",
                source=Source.DRIVER_LOST.value,
                message="the previous coordinator stopped without recording an outcome",
                last_committed_step=latest,
                decision="RESTART",
            )
            self.policy.counts["preemptions"] += 1
            self.state = Preempted(
                attempt=self.attempt, reason="driver_lost", message="previous coordinator lost"
            )
            record_state(self.record, self.state)
        else:
            self.state = persisted
            self._resume_failed = persisted.kind is RunState.FAILED
        if self.state.kind is RunState.PREEMPTED and getattr(self.state, "stop", False):
            # The previous driver stopped on SIGTERM; this one resumes.
            self.state = Preempted(
                attempt=self.attempt, reason=getattr(self.state, "reason", "preemption")
            )
        logger.info("%sstarting from state %s", self._prefix(), self.state.kind.value)
        return self.state

    def _fence_writers(self) -> None:
        """After the lease is taken: this coordinator's record and store write under its
        generation (injected ones are left as given)."""
        from storage.checkpoints import CheckpointStore
        from storage.run_record import RunRecord

        fence = getattr(self._lease, "fence", None)
        if fence is None:
            return
        if type(self.record) is RunRecord and self.record.fence is None:
            self.record = RunRecord(self.location, fence=fence)
        if type(self.store) is CheckpointStore and self.store.fence is None:
            self.store = CheckpointStore(self.location, fence=fence)

    def close(self) -> bool:
        """Close the runner, release the lease. True: the process must end with ``os._exit``
        (see :meth:`cluster.attempt.AttemptRunner.close`)."""
        left_running = False
        try:
            left_running = self.runner.close()
        except Exception:  # process boundary
            logger.warning("closing the attempt runner failed", exc_info=True)
        if self._lease is not None:
            self._lease.release()
        return left_running

    def request_stop(self) -> None:
        """SIGTERM: save and stop (the runner does the emergency save)."""
        self.stop_requested.set()

    def done(self) -> bool:
        if self.state.kind is RunState.FAILED and self._resume_failed:
            return False
        return self.state.is_terminal or (
            self.state.kind is RunState.PREEMPTED and getattr(self.state, "stop", False)
        )

    def run(self) -> State:
        """``start()`` must have been called. Steps until terminal or stopped."""
        while not self.done():
            self.step()
        return self.state

    # -- transitions -------------------------------------------------------------------------
    def _go(self, new: State) -> tuple[State, State]:
        previous = self.state
        check_transition(previous.kind, new.kind)
        record_state(self.record, new)
        self.state = new
        logger.info("%s%s -> %s", self._prefix(), previous.kind.value, new.kind.value)
        return previous, new

    def _latest_step(self) -> int | None:
        steps = self.store.committed_steps()
        return steps[-1] if steps else None

    def _finished_checkpoint(self) -> Any:
        """The latest manifest when it says training finished and its files verify (size and
        sha256 of each, as a restore checks them); None otherwise: a corrupt final checkpoint
        is no success, the run resumes from the newest good step."""
        latest = self.store.latest()
        if latest is None or not latest.state.get("finished"):
            return None
        with tempfile.TemporaryDirectory(prefix="spotrain-verify-") as tmp:
            try:
                restored = self.store.restore(tmp, step=latest.step)
            except NoValidCheckpointError:
                restored = None
        if restored is None or restored.step != latest.step:
            logger.warning(
                "%sthe final checkpoint (step %d) does not verify; resuming from the newest "
                "good step",
                self._prefix(),
                latest.step,
            )
            return None
        return latest

    def step(self) -> tuple[State, State]:
        """One transition; returns (previous, next)."""
        s = self.state
        if self.done():
            return s, s
        if s.kind is RunState.PENDING:
            return self._start_attempt()
        if s.kind in (RunState.PREEMPTED, RunState.FAILED):
            if self.stop_requested.is_set():
                return self._stop_now(s)
            self._resume_failed = False
            backoff = 0.0 if self._fresh_start else self.policy.backoff_s()
            if backoff > 0:
                logger.info("%swaiting %.1fs before restarting", self._prefix(), backoff)
                if self._sleep(backoff) or self.stop_requested.is_set():
                    return self._stop_now(s)
            self._fresh_start = False
            return self._go(Resuming(attempt=self.attempt + 1, backoff_s=round(backoff, 3)))
        if s.kind is RunState.RESUMING:
            return self._start_attempt()
        if s.kind is RunState.RUNNING:
            return self._run_attempt()
        raise AssertionError(f"unhandled state {s.kind}")  # pragma: no cover

    def _stop_now(self, s: State) -> tuple[State, State]:
        # A stop while waiting between attempts: nothing runs, the last commit stands.
        if s.kind is RunState.FAILED:
            self._resume_failed = False  # stay FAILED; the next `spotrain run` retries
            return s, s
        new = Preempted(
            attempt=self.attempt, reason="preemption", stop=True, message="driver received SIGTERM"
        )
        record_state(self.record, new)  # PREEMPTED -> PREEMPTED(stop): same state, new payload
        self.state = new
        return s, new

    def _start_attempt(self) -> tuple[State, State]:
        self._fresh_start = False
        finished = self._finished_checkpoint()
        self.attempt += 1
        latest = self._latest_step()
        if finished is not None:
            # Training ended but the previous coordinator died before recording it.
            self._go(Running(attempt=self.attempt, from_step=latest))
            return self._succeed(finished.state.get("global_step", finished.step))
        run_events.write_attempt_start(
            self.record, attempt=self.attempt, source=Source.DRIVER.value, from_step=latest
        )
        return self._go(Running(attempt=self.attempt, from_step=latest))

    def _succeed(self, global_step: int | None) -> tuple[State, State]:
        prev = self.state
        self._go(Succeeded(attempt=self.attempt, global_step=global_step))
        return prev, self.state

    def _run_attempt(self) -> tuple[State, State]:
        ctx = AttemptContext(
            spec=self.spec,
            run_url=self.run_url,
            location=self.location,
            attempt=self.attempt,
            counts=dict(self.policy.counts),
            stop=self.stop_requested,
            options=self.options,
            lease_generation=getattr(self._lease, "generation", None),
            lease_lost=getattr(self._lease, "lost", None) or threading.Event(),
        )
        started = time.time()
        try:
            result = self.runner.run(ctx)
        except (LeaseHeldError, StaleWriterError):
            raise  # the run belongs to a newer coordinator now: write nothing, stop
        except DriverPreempted as exc:
            latest = self._latest_step()
            run_events.write_attempt_end(
                self.record,
                attempt=self.attempt,
                outcome="preempted",
                duration_s=time.time() - started,
            )
            if not self._preemption_recorded_since_stop():
                run_events.write_preemption(
                    self.record,
                    attempt=self.attempt,
                    failure_kind="preemption",
                    source=Source.DRIVER_SIGTERM.value,
                    message=str(exc),
                    last_committed_step=latest,
                    decision="STOP",
                )
            self.policy.counts["preemptions"] += 1
            return self._go(
                Preempted(attempt=self.attempt, reason="preemption", message=str(exc), stop=True)
            )
        except Exception as exc:  # process boundary of one attempt: everything is classified
            return self._attempt_failed(exc, started)
        run_events.write_attempt_end(
            self.record,
            attempt=self.attempt,
            outcome="succeeded",
            duration_s=time.time() - started,
        )
        step = result.global_step
        if step is None:
            manifest = self.store.latest()
            if manifest is not None:
                step = manifest.state.get("global_step", manifest.step)
        return self._succeed(step)

    def _attempt_failed(self, exc: BaseException, started: float) -> tuple[State, State]:
        failure = classify(exc).redacted(self.location.redact)  # events and states: no secret
        # Ray's controller (cluster.ray.hooks) may already have decided RAISE and charged the
        # budget; then its verdict stands and is not charged twice.
        ray_payload = ray_raise_payload(self.record)
        from_step = self.state.from_step if isinstance(self.state, Running) else None
        self.attempt = max(self.attempt, self._attempts_recorded())
        if ray_payload is not None:
            verdict = verdict_from_ray(ray_payload, failure)
        else:
            latest = self._latest_step()
            if made_progress(from_step, latest):
                # Backoff doubles per consecutive failure *without progress*: this one made some.
                self.policy.record_progress()
            self.policy.log_prefix = self._prefix()
            verdict = self.policy.decide(failure)
            preemption, payload = failure_event(self.attempt, failure, verdict, latest)
            run_events.write_interruption(self.record, preemption, payload)
        run_events.write_attempt_end(
            self.record,
            attempt=self.attempt,
            outcome="failed",
            failure_kind=verdict.failure.kind.value,
            duration_s=time.time() - started,
        )
        if verdict.restart:
            return self._go(
                Preempted(
                    attempt=self.attempt,
                    reason=verdict.failure.kind.value,
                    message=verdict.failure.message,
                    budget=verdict.budget,
                )
            )
        return self._go(
            Failed(
                attempt=self.attempt,
                reason=verdict.failure.kind.value,
                message=verdict.failure.message,
                user_traceback=verdict.failure.user_traceback,  # whole: the user needs it all
                extra={"budget": verdict.budget},
            )
        )

    def _preemption_recorded_since_stop(self) -> bool:
        """The trainer or Ray's controller already recorded the interruption the stop caused."""
        return run_events.preemption_recorded_since_stop(self.record)

    def _attempts_recorded(self) -> int:
        return run_events.attempts(self.record)
