"""gctune (in a child process: freezing the test run's own objects would outlive the
test)."""

from __future__ import annotations

import subprocess
import sys


def _in_a_child(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def test_tune_freezes_what_is_alive_and_collects_less_often() -> None:
    out = _in_a_child(
        "import gc; from service import gctune; gctune.tune(); "
        "print(gc.get_threshold(), gc.get_freeze_count() > 1000)"
    )
    assert out == "(50000, 20, 10) True"


def test_serve_workers_are_tuned() -> None:
    """The uvicorn factory tunes the worker it runs in, once the app is built."""
    out = _in_a_child(
        "import gc, os; os.environ['PIXELSYNC_REDIS_URL'] = 'redis://127.0.0.1:1'; "
        "from service.app import app_from_env; app_from_env(); print(gc.get_threshold())"
    )
    assert out == "(50000, 20, 10)"
