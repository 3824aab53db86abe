"""Trainer defaults; each ``DEFAULT_X`` can be overridden by the environment variable ``SPOTRAIN_X``."""

from __future__ import annotations

import os

from storage.constants import env_float, env_int

#: Steps between two preemption polls. Every rank polls at the same global steps (the Ray
#: poll is a barrier), so this must be the same on every worker.
DEFAULT_PREEMPTION_POLL_STEPS = env_int("SPOTRAIN_PREEMPTION_POLL_STEPS", 10)

#: Shuffle buffer (examples) of the managed input. The order of an epoch is a pure function of
#: (seed, epoch) for any buffer size; a buffer >= dataset size gives a uniform shuffle.
DEFAULT_SHUFFLE_BUFFER = env_int("SPOTRAIN_SHUFFLE_BUFFER", 100_000)

#: How long the end of training / a preemption waits for the last commit.
DEFAULT_COMMIT_TIMEOUT_S = env_float("SPOTRAIN_COMMIT_TIMEOUT_S", 600.0)

#: Local folder for checkpoint staging ("" = the system temp dir).
DEFAULT_LOCAL_TMP_DIR = os.environ.get("SPOTRAIN_LOCAL_TMP_DIR", "")
