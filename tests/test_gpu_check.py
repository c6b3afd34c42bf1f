"""``benchmarks/gpu_check.sh``'s own logic (parts, their order, the overall time limit),
run with a stand-in Python that records each call instead of doing it.

A lent GPU's minutes are few: a part run out of turn, or a check that runs past its
call's limit and loses the parts after it, costs a session its measurements. No GPU is
needed here: the stand-in answers the script's two questions (the block size, whether
pytest-xdist is installed), fails a ``pip install`` made in the folder ``STUB_FAIL_PIP_IN``,
and otherwise sleeps ``STUB_SLEEP`` seconds and exits with ``STUB_RC`` for the part whose
command line contains ``STUB_FAIL``; it logs each call's arguments, and in a second log
the first entry of its ``PYTHONPATH`` (which installed tree it imports).
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="gpu_check.sh needs bash and coreutils' timeout")

STUB = """#!/usr/bin/env bash
per_block=${FASTSARNN_TEST_CUDA_SEQUENCES_PER_BLOCK:-}
echo "$*${per_block:+ [per block $per_block]}" >> "$STUB_LOG"
echo "${PYTHONPATH%%:*} $*" >> "$STUB_LOG.paths"
case "$*" in
    *"print(_config.CUDA_BLOCK_SIZE)"*) echo 256; exit 0 ;;
    *"import xdist"*) exit 1 ;;
    *"pip install"*) [ "$PWD" = "${STUB_FAIL_PIP_IN:-}" ] && exit 1; exit 0 ;;
    *"fastsarnn info"*) exit 0 ;;
esac
[ -n "${STUB_PRINT:-}" ] && printf '%b\n' "$STUB_PRINT"
sleep "${STUB_SLEEP:-0}"
if [ -n "${STUB_FAIL:-}" ] && [[ "$*" == *"$STUB_FAIL"* ]]; then exit "${STUB_RC:-1}"; fi
exit 0
"""

# what identifies each part's command line in the stand-in's log
MARK = {"suites": "[per block 1]", "packed": "[per block 8]",
        "bench": "--config S --config M --config L --config step",
        "xl": "--config XL", "phases": "cuda_phase_costs.py", "cold": "cuda_cold_start.py",
        "split": "--repeat 2 --config S --config step --config M",
        "profile": "cuda_step_profile.py", "baseline": "--setting CUDA_SPLIT_PARTS=auto"}


def run_check(tmp_path, parts, total=600, min_part=1, sleep=0, fail=None, rc=1, settings="",
              baseline=None, cwd=None, fail_pip_in=None, prints="", **limits):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    (tmp_path / "calls.log.paths").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTSARNN_GPU_")}
    env.update(PYTHON=str(stub), OUT=str(tmp_path / "out"), STUB_LOG=str(log),
               STUB_SLEEP=str(sleep), STUB_FAIL=fail or "", STUB_RC=str(rc),
               STUB_FAIL_PIP_IN=str(fail_pip_in or ""), STUB_PRINT=prints,
               FASTSARNN_GPU_PARTS=parts, FASTSARNN_GPU_TOTAL_S=str(total),
               FASTSARNN_GPU_MIN_PART_S=str(min_part), FASTSARNN_GPU_SETTINGS=settings,
               FASTSARNN_GPU_BASELINE_DIR=str(baseline or tmp_path / "no-baseline"))
    env.update({f"FASTSARNN_GPU_{name}": str(v) for name, v in limits.items()})
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)
    calls = [line for line in log.read_text().splitlines()
             if "pip install" not in line and "fastsarnn info" not in line
             and "import _config" not in line and "import xdist" not in line]
    return proc, calls, time.monotonic() - t0


def parts_run(calls):
    return [next(p for p, mark in MARK.items() if mark in call) for call in calls]


def test_parts_run_in_the_order_given_and_the_summary_names_each(tmp_path):
    proc, calls, _ = run_check(tmp_path, "profile suites cold xl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parts_run(calls) == ["profile", "suites", "cold", "xl"]
    last = proc.stdout.strip().splitlines()[-1]
    assert ("profile exit 0, suites exit 0, cold exit 0, xl exit 0;" in last
            and "skipped for time: none" in last), last


def test_every_part_runs_by_default(tmp_path):
    proc, calls, _ = run_check(tmp_path, "", settings="CUDA_MATVEC_WORDS=8,16@XL")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    settings = [c for c in calls if "--setting CUDA_MATVEC_WORDS=8,16" in c]
    assert settings and settings[0].endswith("--repeat 3 --device-arrays --config XL"), calls
    assert (parts_run([c for c in calls if c not in settings])
            == ["suites", "bench", "xl", "packed", "phases", "cold", "split", "profile"])
    assert calls.index(settings[0]) == 5          # after phases, before cold


def test_an_unknown_part_is_refused_before_anything_runs(tmp_path):
    proc, calls, _ = run_check(tmp_path, "suites benchmark")
    assert proc.returncode == 2
    assert "unknown part 'benchmark'" in proc.stdout and "suites bench xl" in proc.stdout
    assert calls == [] and not (tmp_path / "out").exists()


def test_parts_left_without_time_are_skipped_and_named(tmp_path):
    # the script counts whole seconds: 5 s in all leave the first part 4 or 5 s for its
    # 3 s, and the second 1 or 2 s, under the 3 s it needs
    proc, calls, _ = run_check(tmp_path, "suites bench phases profile", total=5,
                               min_part=3, sleep=3)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parts_run(calls) == ["suites"]
    assert "=== bench skipped: " in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert "suites exit 0;" in last and "skipped for time: bench phases profile" in last, last


def test_a_part_gets_no_more_than_what_is_left_of_the_total(tmp_path):
    # the part's own limit is 120 s; the total of 4 s stops it
    proc, calls, elapsed = run_check(tmp_path, "suites bench", total=4, min_part=2,
                                     sleep=60)
    assert elapsed < 30, elapsed
    assert parts_run(calls) == ["suites"]
    assert "ran past" in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    assert "suites exit 124;" in last and "skipped for time: bench" in last, last
    assert proc.returncode == 1


def test_a_suite_stopped_at_its_limit_still_names_its_failures(tmp_path):
    """pytest -v names each test as it ends: a suite stopped before its summary (as the
    first H200 call of 2026-11-28 was) still prints the failures so far, and no passed
    test whose name says "failed"."""
    prints = ("[gw3] [ 29%] FAILED tests/test_cuda.py::test_packed[2]\n"
              "[gw1] [ 30%] PASSED tests/test_api.py::test_a_failed_build_warns\n"
              "tests/test_errors.py::test_x ERROR [ 31%]")
    proc, calls, _ = run_check(tmp_path, "suites", total=4, min_part=2, sleep=60,
                               prints=prints)
    assert " -v " in calls[0] and " -q " not in calls[0], calls
    assert "(stopped: the suites ran past" in proc.stdout
    # the part's heading, the lines picked from its log, then the log's end (its progress)
    lines = proc.stdout.split("=== CUDA suites", 1)[1].splitlines()[1:]
    assert lines[:3] == ["[gw3] [ 29%] FAILED tests/test_cuda.py::test_packed[2]",
                         "tests/test_errors.py::test_x ERROR [ 31%]",
                         "[gw3] [ 29%] FAILED tests/test_cuda.py::test_packed[2]"], lines


def test_a_failed_part_fails_the_check_and_the_others_still_run(tmp_path):
    proc, calls, _ = run_check(tmp_path, "phases suites profile", fail="cuda_phase_costs",
                               rc=3)
    assert parts_run(calls) == ["phases", "suites", "profile"]
    assert proc.returncode == 1
    assert "phases exit 3, suites exit 0, profile exit 0;" in proc.stdout, proc.stdout


def test_settings_report_their_failure_and_each_setting_is_timed_within_the_total(tmp_path):
    settings = "CUDA_MATVEC_WORDS=8,16\nCUDA_ROWS_PER_WARP=4,8@S CUDA_STAGING_BYTES=0,64@M"
    proc, calls, _ = run_check(tmp_path, "settings", settings=settings,
                               fail="CUDA_MATVEC_WORDS")
    assert [c.split("--setting ")[1] for c in calls] == [
        "CUDA_MATVEC_WORDS=8,16 --repeat 3 --device-arrays --config S --config M",
        "CUDA_ROWS_PER_WARP=4,8 --repeat 3 --device-arrays --config S",
        "CUDA_STAGING_BYTES=0,64 --repeat 3 --config M"]     # NumPy arrays: the staging's
    assert proc.returncode == 1 and "settings exit 1;" in proc.stdout, proc.stdout
    proc, calls, _ = run_check(tmp_path, "settings", settings=settings, total=5,
                               min_part=3, sleep=3)
    assert len(calls) == 1 and proc.returncode == 0
    assert "skipped for time: settings CUDA_ROWS_PER_WARP=4,8" in proc.stdout, proc.stdout


def test_the_baseline_and_this_tree_are_timed_in_turn_where_a_baseline_is_there(tmp_path):
    tree = tmp_path / "baseline"
    tree.mkdir()
    (tree / "pyproject.toml").write_text("")
    (tree / "REVISION").write_text("0123abc\n")
    # given relative to the caller's folder: found although the script changes folders
    proc, calls, _ = run_check(tmp_path, "baseline profile", baseline="baseline",
                               cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parts_run(calls) == ["baseline", "baseline", "profile"]
    assert "=== baseline 0123abc then this tree" in proc.stdout
    assert "baseline exit 0, profile exit 0;" in proc.stdout
    # the baseline's own install first, then the check's install of this tree
    paths = [line.split(" ", 1)[0] for line in
             (tmp_path / "calls.log.paths").read_text().splitlines()
             if "CUDA_SPLIT_PARTS=auto" in line or "cuda_step_profile" in line]
    assert len(paths) == 3 and paths[0] != paths[1] == paths[2], paths
    # a baseline that does not install fails the part; this tree is still timed
    proc, calls, _ = run_check(tmp_path, "baseline profile", baseline=tree, fail_pip_in=tree)
    assert parts_run(calls) == ["baseline", "profile"]
    assert "baseline exit 1, profile exit 0;" in proc.stdout and proc.returncode == 1
    (tree / "pyproject.toml").unlink()          # no baseline tree: the part is left out
    proc, calls, _ = run_check(tmp_path, "baseline profile", baseline=tree)
    assert parts_run(calls) == ["profile"] and "baseline exit" not in proc.stdout


@pytest.mark.parametrize("limit", ["TOTAL_S", "MIN_PART_S", "XL_S"])
def test_a_limit_of_no_seconds_is_refused(tmp_path, limit):
    """``timeout 0`` means no limit at all: a limit must be at least 1 s."""
    proc, calls, _ = run_check(tmp_path, "xl", **{limit: 0})
    assert proc.returncode == 2 and calls == []
    assert "at least 1" in proc.stdout and limit.rsplit("_", 1)[0] in proc.stdout


def test_the_packed_part_runs_the_suites_at_the_sequences_per_block_asked(tmp_path):
    """Part ``packed``: the parity, equation and hardening suites (not the others) with
    ``FASTSARNN_TEST_CUDA_SEQUENCES_PER_BLOCK`` from ``FASTSARNN_GPU_SEQUENCES_PER_BLOCK``;
    a value the packed kernel cannot take is refused before anything runs."""
    proc, calls, _ = run_check(tmp_path, "packed suites", SEQUENCES_PER_BLOCK=4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c.rsplit(" [", 1)[1] for c in calls] == ["per block 4]", "per block 1]"], calls
    packed = calls[0]
    assert ("test_parity.py" in packed and "test_hardening.py" in packed
            and "test_cuda.py" not in packed and "test_api.py" not in packed), packed
    assert "packed exit 0, suites exit 0;" in proc.stdout.strip().splitlines()[-1]
    for bad in ("1", "33", "eight"):
        proc, calls, _ = run_check(tmp_path, "packed", SEQUENCES_PER_BLOCK=bad)
        assert proc.returncode == 2 and calls == [], (bad, proc.stdout)
        assert "SEQUENCES_PER_BLOCK" in proc.stdout
