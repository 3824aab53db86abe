"""The checkpoint a restart restores, read while the worker group forms.

A restarted worker spends seconds before its restore: MultiWorkerMirroredStrategy's collective
set-up waits for the slowest worker, then the model is built. Neither can start earlier
(TensorFlow's collectives must be configured before any other TensorFlow call in the process),
but the checkpoint's bytes depend on neither. :class:`RestorePrefetch` downloads and verifies
the newest committed step into a local directory in a thread from the moment the train
function starts: storage I/O only, no TensorFlow.

The restore (:func:`trainer.restore.download_agreed`) takes it when it holds the step agreed on
(the chief: the newest committed step at restore time, same manifest digest; the others: the
step the chief broadcast) and downloads as before otherwise. A newer commit, a corrupt step and
its fallback (with its ``checkpoint_corrupt`` event) stay the restore's own: the prefetch never
falls back and records nothing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from typing import Any

from storage.checkpoints import CheckpointStore
from storage.manifest import Manifest

logger = logging.getLogger(__name__)


class RestorePrefetch:
    """One background download of the newest committed step of ``store``'s run."""

    def __init__(self, store: CheckpointStore, local_tmp_dir: str = "") -> None:
        self.url = store.url
        self.dir = tempfile.mkdtemp(prefix="spotrain-prefetch-", dir=local_tmp_dir or None)
        self.manifest: Manifest | None = None
        self.seconds: float | None = None
        #: Unix time the download ended (the restore event's ``prefetched_at`` when it is used).
        self.finished_at: float | None = None
        self._store = store
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._fetch, name="spotrain-restore-prefetch", daemon=True
        )
        self._thread.start()

    def _fetch(self) -> None:
        started = time.perf_counter()
        try:
            steps = self._store.committed_steps()
            if steps:
                self.manifest = self._store.fetch(steps[-1], self.dir)
                self.seconds = time.perf_counter() - started
                self.finished_at = time.time()
        except Exception as exc:  # thread boundary: the restore then downloads as before
            logger.info("[run=%s] restore prefetch not used: %s", self.url, exc)
            self.manifest = None
        finally:
            self._done.set()

    def take(self, step: int, digest: str | None = None, timeout_s: float = 600.0) -> str | None:
        """The directory holding ``step`` (with manifest ``digest`` when given), verified; None
        when the prefetch holds another step or failed. Waits for the download to end."""
        if not self._done.wait(timeout_s):
            return None
        m = self.manifest
        if m is None or m.step != step or (digest is not None and m.digest != digest):
            return None
        return self.dir

    def step(self, timeout_s: float = 600.0) -> int | None:
        """The step downloaded (after waiting for the download), or None."""
        if not self._done.wait(timeout_s) or self.manifest is None:
            return None
        return self.manifest.step

    def close(self) -> None:
        self._done.wait(60)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_restore_prefetch(job: Any) -> RestorePrefetch | None:
    """A :class:`RestorePrefetch` of ``job``'s run (a :class:`trainer.job.TrainJob`); None
    when its storage cannot be opened (the restore then says what is wrong)."""
    try:
        return RestorePrefetch(CheckpointStore(job.run_url, job.storage_options))
    except Exception as exc:  # the restore opens the same storage and reports it
        logger.info("[run=%s] no restore prefetch: %s", job.name, exc)
        return None
