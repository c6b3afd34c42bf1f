"""``fastsarnn bench``: the quick suite writes its JSON and plot; bad options fail clearly."""

import json
import os
import subprocess
import sys

import pytest

import fastsarnn as fs
from fastsarnn import bench

FIELDS = {"config", "backend", "median_s", "min_s", "speedup_vs_numpy", "speedup_vs_torch",
          "gflops", "pct_sgemm", "max_abs_err", "within_tolerance", "B", "T", "D", "H"}


def run_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "fastsarnn", "bench", *args],
                          capture_output=True, text=True, timeout=600, cwd=str(cwd))


def test_quick_bench_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = run_cli(["--quick", "--repeat", "2", "--no-progress", "--json", "r.json",
                   "--plot", "p.png"], tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    recs = data["records"]
    expected = bench.available_runners()
    assert "numpy" in expected
    for cfg in bench.QUICK:
        got = [r["backend"] for r in recs if r["config"] == cfg]
        assert got == expected, cfg
    for r in recs:
        assert FIELDS <= set(r), set(FIELDS) - set(r)
        assert r["within_tolerance"] and r["max_abs_err"] <= r["tolerance"]
        assert r["min_s"] > 0 and r["gflops"] > 0 and r["pct_sgemm"] > 0
    assert data["sgemm_gflops"] > 0
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "x numpy" in out.stdout and "GFLOP/s" in out.stdout


@pytest.mark.parametrize("args,msg", [
    (["--config", "XL"], "invalid choice"),
    (["--backends", "fortran"], "unknown backend"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--hidden-size", "-3"], "--hidden-size must be >= 1"),
    (["--dtype", "float16"], "invalid choice"),
])
def test_bad_options_fail_clearly(tmp_path, args, msg):
    out = run_cli(["--quick", *args], tmp_path)
    assert out.returncode == 2
    assert msg in out.stderr


def test_unavailable_backend_is_an_error_not_a_skip(tmp_path):
    if fs.backends()["cuda"].available:
        pytest.skip("cuda is available here")
    out = run_cli(["--quick", "--backends", "cuda"], tmp_path)
    assert out.returncode == 2 and "unavailable" in out.stderr


def test_custom_sizes_and_flop_count(tmp_path):
    out = run_cli(["--config", "S", "--quick", "--seq-len", "20", "--hidden-size", "8",
                   "--score", "additive", "--backends", "numpy", "--repeat", "1",
                   "--no-progress", "--json", "c.json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "c.json").read_text())["records"][0]
    assert (rec["T"], rec["H"], rec["score"]) == (20, 8, "additive")
    cfg = bench.Config("x", 2, 3, 4, 5, window=2, score="additive", recurrence="hc")
    n = 2 * (1 + 2 + 2)                       # attended positions over all valid steps
    N = 6
    want = N * 2 * 5 * 9 + 4 * 5 * n + N * 2 * 25 + N * 4 * 5 * 5 + 3 * 5 * n
    assert bench.useful_flops(cfg) == want
    assert os.path.exists(tmp_path / "c.json")
