"""Trainer defaults; each ``DEFAULT_X`` can be overridden by the environment variable ``SPOTRAIN_X``."""

from __future__ import annotations

import os

from storage.constants import env_float, env_int

#: Steps between two preemption polls: the default of the job field ``preemption_poll_steps``.
#: Every rank polls at the same global steps (the Ray poll is a barrier), so a job gives every
#: worker the same value.
PREEMPTION_POLL_STEPS = 10
#: The drop-in callback's default (``BackupOptions``); a job always passes its own value, so
#: ``SPOTRAIN_PREEMPTION_POLL_STEPS`` changes only callbacks built without one.
DEFAULT_PREEMPTION_POLL_STEPS = env_int("SPOTRAIN_PREEMPTION_POLL_STEPS", PREEMPTION_POLL_STEPS)

#: Committed checkpoints to keep (job field ``checkpoint.keep_last``, the callback's default).
DEFAULT_KEEP_LAST = 3

#: Shuffle buffer (examples) of the managed input. The order of an epoch is a pure function of
#: (seed, epoch) for any buffer size; a buffer >= dataset size gives a uniform shuffle.
DEFAULT_SHUFFLE_BUFFER = env_int("SPOTRAIN_SHUFFLE_BUFFER", 100_000)

#: How long the end of training / a preemption waits for the last commit.
DEFAULT_COMMIT_TIMEOUT_S = env_float("SPOTRAIN_COMMIT_TIMEOUT_S", 600.0)

#: Local folder for checkpoint staging ("" = the system temp dir).
DEFAULT_LOCAL_TMP_DIR = os.environ.get("SPOTRAIN_LOCAL_TMP_DIR", "")

#: How often a worker's notice watcher reads SIGTERM and Ray's drain notice (seconds).
DEFAULT_NOTICE_WATCH_S = env_float("SPOTRAIN_NOTICE_WATCH_S", 0.25)
#: Between two polls of the ranks, at most this many seconds of the slowest rank's steps (and
#: at most PREEMPTION_POLL_STEPS steps): a notice during long steps is acted on at the next
#: step boundary after about this long. Must be below the drain deadlines a run gets.
DEFAULT_PREEMPTION_POLL_S = env_float("SPOTRAIN_PREEMPTION_POLL_S", 1.0)

#: Warm spares: idle worker processes each training worker asks its node's raylet for, in its
#: own job and runtime env, once training runs (0: none). With ``trainer.warm`` preloaded they
#: have imported TensorFlow and the trainer, so a restarted worker group starts warm.
DEFAULT_WARM_SPARES = env_int("SPOTRAIN_WARM_SPARES", 1)
#: How long a spare is kept alive while idle (Ray kills idle workers above its soft limit after
#: that). Longer than the run is fine: the spares end with the job.
DEFAULT_SPARE_KEEP_ALIVE_S = env_float("SPOTRAIN_SPARE_KEEP_ALIVE_S", 3600.0)

#: A finite ``tf.data.Dataset`` from ``make_dataset`` is read once per attempt into memory (then
#: each worker gathers only its rows) when it holds at most this many bytes; a larger one streams
#: (every worker reads all of it). 0 = always stream.
DEFAULT_MATERIALIZE_BYTES = env_int("SPOTRAIN_MATERIALIZE_BYTES", 2 * 2**30)

#: Global-batch rows one read of the index-addressable input covers at most (a chunk of
#: ``DEFAULT_READ_ROWS // global_batch_size`` steps, at least one): larger chunks share the
#: per-read cost. Reads start at one step and double, so a first batch waits for one step.
DEFAULT_READ_ROWS = env_int("SPOTRAIN_READ_ROWS", 65_536)

#: Bytes of converted rows a file source (Parquet) keeps in memory at most: the row groups of
#: about two shuffle windows, more when one read needs more (``window_blocks: 0``). A read that
#: needs more than this goes row group by row group (slower, within the old cache's bound).
DEFAULT_ROW_CACHE_BYTES = env_int("SPOTRAIN_ROW_CACHE_BYTES", 2**30)
