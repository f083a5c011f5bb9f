"""The thread policy: OpenMP's spinning bounded before torch loads, the thread count chosen
from the usable CPUs and their load, --threads / DLF_THREADS overriding, all recorded in the
trace. Checked by the recorded choice and by what a fresh process sees, never by timing."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml

from dlf import threads
from dlf.cli import main
from dlf.engine.trace import open_trace
from dlf.errors import ConfigError
from tests.conftest import tiny_config

OMP = {"DLF_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}


def fresh_python(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter with ``env`` added (and the thread variables unset)."""
    base = {k: v for k, v in os.environ.items() if k not in OMP}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_dlf_bounds_spinning_before_torch_loads():
    code = "import dlf, os, sys; print(os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)"
    assert fresh_python(code) == f"{threads.SPIN_COUNT} True"
    # the order that matters: the bound is in the environment before torch's import
    code = (
        "import builtins, os; real = builtins.__import__\n"
        "def spy(name, *a, **k):\n"
        "    if name == 'torch' and not hasattr(spy, 'seen'):\n"
        "        spy.seen = os.environ.get('GOMP_SPINCOUNT')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = spy\nimport dlf\nprint(spy.seen)"
    )
    assert fresh_python(code) == threads.SPIN_COUNT


@pytest.mark.parametrize(
    ("env", "seen"),
    [
        ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE None"),  # a user's policy is not overridden
        ({"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE None"),
        ({"GOMP_SPINCOUNT": "5"}, "None 5"),  # nor a user's spin count
    ],
)
def test_a_users_own_openmp_settings_are_kept(env, seen):
    code = (
        "import os, dlf; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    )
    assert fresh_python(code, **env) == seen


def test_torch_loaded_first_is_said_in_the_recorded_policy():
    code = "import torch, dlf.threads as t; print(t.wait_policy())"
    assert "set after torch was loaded" in fresh_python(code)


def test_explicit_counts_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("DLF_THREADS", "3")
    assert threads.choose(2) == threads.ThreadChoice(2, "--threads 2")
    assert threads.choose() == threads.ThreadChoice(3, "DLF_THREADS=3")


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_dlf_threads_is_one_line_naming_it(monkeypatch, bad):
    monkeypatch.setenv("DLF_THREADS", bad)
    with pytest.raises(ConfigError, match=r"^DLF_THREADS: .* allowed: an integer >= 1$"):
        threads.choose()


@pytest.mark.parametrize(
    ("usable", "busy", "expected"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 2.0, 1), (2, 9.0, 1), (8, 3.2, 5), (1, 0.0, 1)],
)
def test_auto_takes_the_idle_share_of_the_usable_cpus(monkeypatch, usable, busy, expected):
    monkeypatch.delenv("DLF_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: list(range(usable)))
    monkeypatch.setattr(threads, "busy_cpus", lambda cpus, seconds=0.1: busy)
    choice = threads.choose()
    assert choice.threads == expected
    assert f"{usable} usable CPUs, {busy:.1f} busy" in choice.reason


def test_busy_cpus_sees_a_spinning_process():
    """A CPU-bound child pinned to one of our CPUs shows up as about one busy CPU."""
    cpus = threads.usable_cpus()
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(spin.pid, {cpus[0]})
        busy = threads.busy_cpus([cpus[0]], seconds=0.5)
    finally:
        spin.kill()
        spin.wait()
    assert busy > 0.5


def test_usable_cpus_follow_the_affinity_mask():
    code = (
        "import os; os.sched_setaffinity(0, {0}); import dlf.threads as t; print(t.usable_cpus())"
    )
    assert fresh_python(code) == "[0]"


def run_cli(tmp_path, *extra: str, **env: str) -> dict:
    """``dlf-study run`` of a tiny config in a fresh process; the trace's attributes."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "out", train={"steps": 20})))
    code = "import sys; from dlf.cli import main; sys.exit(main(sys.argv[1:]))"
    base = {k: v for k, v in os.environ.items() if k not in OMP}
    done = subprocess.run(
        [sys.executable, "-c", code, "run", str(config), "--fresh", *extra],
        env={**base, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return dict(open_trace(tmp_path / "out" / "tiny" / "trace.nc").attrs)


def test_the_trace_records_the_choice_its_policy_and_its_cost(tmp_path):
    attrs = run_cli(tmp_path, "--threads", "1")
    assert (attrs["threads"], attrs["threads_reason"]) == (1, "--threads 1")
    assert attrs["omp_wait_policy"] == f"spin GOMP_SPINCOUNT={threads.SPIN_COUNT}, then sleep"
    assert attrs["wall_seconds"] > 0 and attrs["cpu_seconds"] > 0
    attrs = run_cli(tmp_path, DLF_THREADS="2")
    assert (attrs["threads"], attrs["threads_reason"]) == (2, "DLF_THREADS=2")
    attrs = run_cli(tmp_path)
    assert attrs["threads_reason"].startswith("auto: ")
    assert 1 <= attrs["threads"] <= len(os.sched_getaffinity(0))


def test_bad_threads_option_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(tmp_path / "x.yaml"), "--threads", "0"])
    assert exit_.value.code == 2
    assert "--threads: '0' is not an integer >= 1" in capsys.readouterr().err


def test_version():
    done = subprocess.run(
        [sys.executable, "-m", "dlf.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout == f"dlf-study {version('dlf-study')}\n"
