"""The digits model (examples/digits.py), built after a pause of ``PAUSE_S``: the workers' start-up
then outlasts a notice's way to them (Ray Train's watcher actor starts with the worker group; seen
taking ~4 s here), so a drain sent just after the workers are up lands during start-up however
fast the rest of the start is. Same weights and data as the digits job: its reference applies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trainer.entry_points import load_entry_point

PAUSE_S = 8.0
ROOT = Path(__file__).resolve().parents[2]


def build_model(config: dict[str, Any]) -> Any:
    time.sleep(PAUSE_S)
    return load_entry_point("examples/digits.py:build_model", str(ROOT))(config)
