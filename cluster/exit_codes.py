"""Exit codes of the ``spotrain`` command, relied on by CronJobs, ``ray job submit`` and scripts.

======  ===================================================================================
code    meaning
======  ===================================================================================
0       the run SUCCEEDED (also: ``spotrain run`` of a run that already succeeded)
2       bad command line (argparse)
3       user error: invalid job spec, or an error in the user's code (not retried)
4       infrastructure error after the retry budgets were spent (preemptions, lost nodes,
        storage faults); running again resumes from the latest committed checkpoint
5       the run is held by another live coordinator (its lease has not expired)
6       the run cannot be resumed: no committed checkpoint verifies (all corrupt), or its run
        record is damaged; start fresh (a new run name, or delete the run folder)
75      this coordinator was preempted (SIGTERM) after saving; run again to resume
        (75 is EX_TEMPFAIL from sysexits.h: "try again later")
======  ===================================================================================
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of ``spotrain``; see the module docstring."""

    OK = 0
    USAGE = 2
    USER_ERROR = 3
    INFRA_ERROR = 4
    HELD = 5
    RUN_DAMAGED = 6
    PREEMPTED = 75
