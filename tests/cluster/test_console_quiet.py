"""The console shows spotrain's own lines: TensorFlow's C++ start-up lines and Ray's token-auth
banner appear only with ``-v``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.display import setup_logging

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [True, False])
def test_tensorflow_start_up_lines_only_when_verbose(quiet: bool) -> None:
    code = (
        "import sys; from trainer.env import import_tensorflow; "
        f"import_tensorflow(quiet={quiet}); print('after', file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    noisy = "absl::InitializeLog" in proc.stderr or "cudart_stub" in proc.stderr
    assert noisy is not quiet, proc.stderr
    assert proc.stderr.rstrip().endswith("after")  # stderr works again after the import


@pytest.mark.parametrize("verbose", [True, False])
def test_ray_token_banner_only_when_verbose(verbose: bool) -> None:
    setup_logging("text", verbose)
    from trainer.ray_internals import RAY_TOKEN_BANNER_LOGGER

    banner = logging.getLogger(RAY_TOKEN_BANNER_LOGGER)
    assert banner.isEnabledFor(logging.WARNING) is verbose
    assert logging.getLogger("ray").isEnabledFor(logging.WARNING)
