"""``fastsarnn bench`` and the command line: the quick suite writes its JSON and plot, tables
come as configurations finish, noise is flagged, and every user mistake gets one ``error:``
line."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import fastsarnn as fs
from fastsarnn import _config, bench
from fastsarnn.bench import suite

FIELDS = {"config", "backend", "median_s", "min_s", "speedup_vs_numpy", "speedup_vs_torch",
          "gflops", "pct_sgemm", "max_abs_err", "within_tolerance", "B", "T", "D", "H",
          "spread", "noisy", "load_per_core", "repeat", "times_s"}


def run_cmd(args, cwd, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastsarnn", *args], capture_output=True,
                          text=True, timeout=600, cwd=str(cwd), env=full_env)


def run_cli(args, cwd):
    return run_cmd(["bench", *args], cwd)


def test_quick_bench_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = run_cli(["--quick", "--repeat", "2", "--no-progress", "--json", "r.json",
                   "--plot", "p.png"], tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    recs = data["records"]
    expected = bench.available_runners()
    assert "numpy" in expected
    cfgs = bench.default_configs(expected, quick=True)
    assert ("XL" in [c.name for c in cfgs]) == any(n in bench.GPU_RUNNERS for n in expected)
    for cfg in cfgs:
        got = [r["backend"] for r in recs if r["config"] == cfg.name]
        assert got == bench.runners_for(cfg, expected), cfg
    for r in recs:
        if "skipped" in r:
            continue
        assert FIELDS <= set(r), set(FIELDS) - set(r)
        assert r["within_tolerance"] and r["max_abs_err"] <= r["tolerance"]
        assert r["min_s"] > 0 and r["gflops"] > 0
        if r["backend"] in bench.GPU_RUNNERS:      # the CPU's SGEMM is no ceiling for them
            assert r["pct_sgemm"] is None and not r["pct_sgemm_capped"]
        else:
            assert 0 < r["pct_sgemm"] <= 100
        assert len(r["times_s"]) == r["repeat"] == 2       # every runner: the same count
        assert r["noisy"] == (r["spread"] > _config.BENCH_NOISY_SPREAD)
    assert data["sgemm_gflops"] > 0 and data["sgemm"]["start"]["runs"] >= 2
    assert isinstance(data["reliable"], bool) and isinstance(data["warnings"], list)
    assert data["reliable"] == (not data["warnings"])
    assert "gpu" in data["machine"]
    # the settings the figures were measured with (the CLI's process: the defaults)
    assert data["settings"] == json.loads(json.dumps(bench.suite.settings()))
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "x numpy" in out.stdout and "GFLOP/s" in out.stdout
    assert "figures look" in out.stdout


def test_settings_are_the_live_values_as_json(monkeypatch):
    """bench --json's "settings": _config as it is when the figures are measured, each
    value one JSON can hold (or its repr), never the names of environment variables."""
    monkeypatch.setattr(_config, "CUDA_STAGING_BYTES", np.int64(4 << 20))
    monkeypatch.setattr(_config, "CUDA_SPLIT_MIN_POSITIONS", 128)
    monkeypatch.setattr(_config, "NUMBA_FASTMATH", frozenset({"nsz", "arcp"}))
    monkeypatch.setattr(_config, "CUDA_SPLIT_PARTS", object())
    monkeypatch.setattr(_config, "BENCH_NOISY_SPREAD", float("nan"))
    got = suite.settings()
    json.dumps(got, allow_nan=False)
    assert got["CUDA_STAGING_BYTES"] == 4 << 20 and type(got["CUDA_STAGING_BYTES"]) is int
    assert got["CUDA_SPLIT_MIN_POSITIONS"] == 128
    assert got["NUMBA_FASTMATH"] == ["arcp", "nsz"]
    assert got["CUDA_SPLIT_PARTS"].startswith("<object object")
    assert got["BENCH_NOISY_SPREAD"] == "nan"
    assert got["SCORES"] == _config.SCORES and got["TOLERANCE"] == _config.TOLERANCE
    assert not any(k.startswith("ENV_") for k in got)
    assert set(got) == {k for k in vars(_config) if k.isupper() and not k.startswith("ENV_")}


def _args(tmp_path, **over):
    import argparse
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--quick", "--repeat", "2", "--backends", "numpy", "--no-progress",
                         "--config", "S", "--config", "step"])
    for k, v in over.items():
        setattr(args, k, v)
    return args, p


def test_each_table_is_printed_before_the_next_configuration_runs(tmp_path, capsys,
                                                                  monkeypatch):
    seen_before = {}
    real = suite.run_config

    def spy(cfg, *a, **k):
        seen_before[cfg.name] = capsys.readouterr().out      # what was printed so far
        print(seen_before[cfg.name], end="")                  # keep it for the final check
        return real(cfg, *a, **k)

    monkeypatch.setattr(suite, "run_config", spy)
    args, p = _args(tmp_path)
    assert suite.run_cli(args, p) == 0
    assert "\nS: B=1" not in seen_before["S"]
    assert "\nS: B=1" in seen_before["step"]          # S's table came before step started


def test_noisy_runs_are_flagged(monkeypatch):
    real_runner = suite.runner
    delays = iter([0.0, 0.005, 0.05, 0.05])            # warm-up, then min 5 ms, median 50 ms

    def slow_runner(cfg, model, x, who):
        run = real_runner(cfg, model, x, who)
        result = []

        def wrapped():     # the real run once (checked), then only the delays are timed,
            time.sleep(next(delays))    # whatever the machine's load
            if not result:
                result.append(run())
            return result[0]
        return wrapped

    monkeypatch.setattr(suite, "runner", slow_runner)
    cfg = bench.QUICK["S"]
    (rec,) = suite.run_config(cfg, ["numpy"], 3, sgemm=100.0)
    assert rec["spread"] > 1.5 and rec["noisy"]
    table = suite.format_table([rec])
    assert "noisy" in table and "unreliable" in table and "!" in table


def test_percent_of_sgemm_never_exceeds_100():
    """Capped at 100 for a CPU runner (a disturbed baseline); a GPU runner's rate, above
    the host's SGEMM as it should be, has no percentage and flags nothing (on an H200,
    cuda-device on XL ran at 2.7 TFLOP/s against the host's 1.0)."""
    recs = [{"config": "S", "backend": "c", "gflops": 50.0},
            {"config": "S", "backend": "numba", "gflops": 5.0},
            {"config": "S", "backend": "cuda-device", "gflops": 500.0}]
    suite.set_sgemm(recs, 20.0)
    assert recs[0]["pct_sgemm"] == 100.0 and recs[0]["pct_sgemm_capped"]
    assert recs[1]["pct_sgemm"] == 25.0 and not recs[1]["pct_sgemm_capped"]
    assert recs[2]["pct_sgemm"] is None and not recs[2]["pct_sgemm_capped"]
    for r in recs:
        r.update(step=False, B=1, T=2, D=3, H=4, window=None, score="dot", dtype="float32",
                 repeat=3, median_s=1.0, min_s=1.0, spread=1.0, noisy=False,
                 speedup_vs_numpy=None, speedup_vs_torch=None, max_abs_err=0.0,
                 within_tolerance=True, load_per_core=None)
    table = suite.format_table(recs)
    assert ">100" in table and "capped at 100" in table
    rows = {ln.split()[0]: ln.split() for ln in table.splitlines() if ln.startswith("  c ")
            or ln.startswith("  numba ") or ln.startswith("  cuda-device ")}
    assert rows["c"][7] == ">100" and rows["numba"][7] == "25.0"
    assert rows["cuda-device"][7] == "-" and "capped at 100 for c:" in table
    # only GPU runners above the SGEMM rate: nothing capped, nothing flagged
    gpu_only = [r for r in recs if r["backend"] == "cuda-device"]
    suite.set_sgemm(gpu_only, 20.0)
    assert "capped" not in suite.format_table(gpu_only)


def test_sgemm_baseline_is_the_best_of_several_warm_runs():
    res = bench.measure_sgemm(64, min_runs=4, min_seconds=0.01)
    assert res["runs"] >= 4 and res["best_s"] <= res["median_s"]
    assert res["gflops"] == pytest.approx(2 * 64 ** 3 / res["best_s"] / 1e9)


def test_remaining_time_is_estimated_from_measured_rates():
    s, m = bench.QUICK["S"], bench.QUICK["M"]
    est = suite.Estimate([(s, ["c", "numpy"]), (m, ["c", "numpy"])], repeat=2)
    assert est.remaining_s() is None                    # nothing measured yet
    est.reference_done("S", 0.01)
    for who, sec in (("c", 0.001), ("numpy", 0.1)):
        for _ in range(3):
            est.ran("S", who, sec)
    fs_, fm = bench.useful_flops(s), bench.useful_flops(m)
    want = 3 * (0.001 + 0.1) * fm / fs_ + 0.01 * fm / fs_ + 2 * suite.SETTLE_S
    assert est.remaining_s() == pytest.approx(want)
    # a runner part-way through a configuration is priced at its own runs there, even when
    # they are far slower than its earlier rate suggested (a machine that got busy)
    est.reference_done("M", 0.01)
    est.ran("M", "c", 0.001 * fm / fs_)
    est.ran("M", "numpy", 50.0)
    assert est.remaining_s() == pytest.approx(2 * 0.001 * fm / fs_ + 2 * 50.0)


def test_xl_runs_by_default_only_with_a_gpu_runner():
    assert "XL" not in [c.name for c in bench.default_configs(["c", "numpy", "torch"])]
    assert "XL" in [c.name for c in bench.default_configs(["c", "numpy", "torch-cuda"])]
    xl = bench.CONFIGS["XL"]
    assert (xl.B, xl.T, xl.D, xl.H, xl.window) == (1024, 512, 64, 256, None)
    assert bench.runners_for(xl, ["c", "numpy", "torch", "torch-cuda"]) == ["c", "torch-cuda"]
    assert bench.runners_for(xl, ["numpy", "torch"], explicit=True) == ["numpy", "torch"]
    assert bench.runners_for(bench.CONFIGS["M"], ["c", "numpy"]) == ["c", "numpy"]


@pytest.mark.parametrize("args,msg", [
    (["--config", "XXL"], "invalid choice"),
    (["--backends", "fortran"], "unknown backend"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--hidden-size", "-3"], "--hidden-size must be >= 1"),
    (["--dtype", "float16"], "invalid choice"),
    (["--json", "no/such/folder/r.json"], "does not exist"),
])
def test_bad_options_fail_clearly(tmp_path, args, msg):
    out = run_cli(["--quick", *args], tmp_path)
    assert out.returncode == 2
    assert msg in out.stderr
    assert out.stderr.startswith("usage: fastsarnn bench")
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("name", ["cuda", "cuda-device"])
def test_unavailable_backend_is_an_error_not_a_skip(tmp_path, name):
    if fs.backends()["cuda"].available:
        pytest.skip("cuda is available here")
    out = run_cli(["--quick", "--backends", name], tmp_path)
    assert out.returncode == 2 and "unavailable" in out.stderr
    assert name == "cuda" or "'cuda-device' runs backend 'cuda'" in out.stderr
    assert "cuda-device" not in bench.available_runners()


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


def test_plot_reference_slopes():
    from fastsarnn.bench.plotting import fitted_slope
    Ts = [256, 512, 1024, 2048]
    assert fitted_slope(Ts, [t ** 2 * 1e-6 for t in Ts]) == pytest.approx(2.0)
    assert fitted_slope(Ts, [t * 3e-3 for t in Ts]) == pytest.approx(1.0)


# -- the command line: one `error:` line per mistake ---------------------------------------

def assert_one_error_line(out, status=None):
    assert out.returncode != 0 if status is None else out.returncode == status, out
    assert "Traceback" not in out.stderr, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out.stderr
    return errors[0]


def test_unknown_backend_in_the_environment(tmp_path):
    out = run_cmd(["info"], tmp_path, env={"FASTSARNN_BACKEND": "garbage"})
    line = assert_one_error_line(out)
    assert "garbage" in line and "FASTSARNN_BACKEND" in line
    assert out.stdout == ""                              # no half report


def test_demo_with_an_unknown_backend(tmp_path):
    out = run_cmd(["demo", "--backend", "foo"], tmp_path)
    line = assert_one_error_line(out, 2)
    assert "'foo'" in line and "expected one of" in line
    assert out.stderr.startswith("usage: fastsarnn demo")   # the subcommand's usage


def test_demo_with_an_unavailable_backend(tmp_path):
    if fs.backends()["cuda"].available:
        pytest.skip("cuda is available here")
    out = run_cmd(["demo", "--backend", "cuda"], tmp_path)
    line = assert_one_error_line(out, 2)
    assert "'cuda' is unavailable" in line


def test_info_flags_a_selected_backend_that_cannot_run(tmp_path):
    if fs.backends()["cuda"].available:
        pytest.skip("cuda is available here")
    out = run_cmd(["info"], tmp_path, env={"FASTSARNN_BACKEND": "cuda"})
    line = assert_one_error_line(out, 1)
    assert "'cuda'" in line and "cannot run here" in line
    assert "backends:" in out.stdout                    # the report is there to say why


def test_help_is_plain_text_and_lists_every_command(tmp_path):
    out = run_cmd(["--help"], tmp_path)
    assert out.returncode == 0
    assert "``" not in out.stdout and ":func:" not in out.stdout
    for cmd in ("info", "bench", "demo"):
        assert f"  {cmd} " in out.stdout, cmd


def test_demo_plot_without_a_file_name_writes_the_default(tmp_path):
    pytest.importorskip("matplotlib")
    out = run_cmd(["demo", "--n", "20", "--plot"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"


def test_set_backend_fails_when_called_for_a_backend_that_cannot_run(monkeypatch):
    from fastsarnn import _registry
    monkeypatch.delenv("FASTSARNN_BACKEND", raising=False)
    monkeypatch.setitem(_registry._loaded, "numba",
                        _registry._UnavailableBackend("numba", "test says no"))
    fs.set_backend("numpy")
    try:
        with pytest.raises(fs.BackendUnavailableError, match="test says no"):
            fs.set_backend("numba")
        assert fs.get_backend() == "numpy"              # the failed call changed nothing
        with pytest.raises(fs.BackendUnavailableError, match="test says no"):
            with fs.use_backend("numba"):
                pass
        assert fs.get_backend() == "numpy"
    finally:
        fs.set_backend(None)
    # the environment variable is read per call: an unavailable backend raises at use
    monkeypatch.setenv("FASTSARNN_BACKEND", "numba")
    assert fs.get_backend() == "numba"
    with pytest.raises(fs.BackendUnavailableError, match="test says no"):
        fs.SelfAttentionRNN.random(2, 3, seed=0).forward(np.zeros((2, 2)))


def test_set_backend_cuda_without_a_gpu():
    if fs.backends()["cuda"].available:
        pytest.skip("cuda is available here")
    with pytest.raises(fs.BackendUnavailableError, match="cuda"):
        fs.set_backend("cuda")
    assert fs.get_backend() != "cuda"


def test_a_busy_machine_is_flagged_in_output_and_json(tmp_path, capsys, monkeypatch):
    from fastsarnn import _sysinfo
    monkeypatch.setattr(_sysinfo, "load_per_core", lambda: 3.0)
    args, p = _args(tmp_path, json=str(tmp_path / "b.json"), config=["S"])
    assert suite.run_cli(args, p) == 0
    out = capsys.readouterr().out
    assert "busy before the benchmark started" in out and "UNRELIABLE" in out
    assert "note: busy" in out
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["reliable"] is False and data["load_per_core_before"] == 3.0
    assert any("busy" in w for w in data["warnings"])
    assert any("S" in w and "runnable threads" in w for w in data["warnings"])


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
def test_output_into_a_closed_pipe_stops_quietly(tmp_path, unbuffered):
    """``fastsarnn info | head -0``: the reader is gone before the first line is written;
    the command stops without an error message or a traceback, whether Python's output is
    buffered (the error then comes with the flush) or not."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTSARNN_BACKEND", "PYTHONUNBUFFERED")}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.Popen([sys.executable, "-m", "fastsarnn", "info"], cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()            # before the interpreter has started: every write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == "", err


def test_another_broken_pipe_is_still_an_error(monkeypatch, capsys):
    from fastsarnn import cli

    def broken():
        raise BrokenPipeError(32, "Broken pipe (a worker's)")

    monkeypatch.setattr(cli, "info", broken)
    assert cli.main(["info"]) == 1
    assert "error: [Errno 32] Broken pipe (a worker's)" in capsys.readouterr().err


# -- SPEC section 6: configurations, problem, FLOPs; the suite's checks and figures ----------

def test_configurations_are_the_contracts():
    want = {"S": (1, 1024, 64, 128, None), "M": (32, 512, 64, 256, None),
            "L": (1, 16384, 64, 128, 256), "step": (1, 1024, 64, 128, None),
            "XL": (1024, 512, 64, 256, None)}
    assert {n: (c.B, c.T, c.D, c.H, c.window) for n, c in suite.CONFIGS.items()} == want
    for name, cfg in suite.CONFIGS.items():
        assert (cfg.dtype, cfg.score, cfg.recurrence) == ("float32", "dot", "c"), name
        assert cfg.step == (name == "step") and cfg.gpu_scale == (name == "XL"), name
    assert [c.name for c in suite.default_configs(["c", "numpy"])] == ["S", "M", "L", "step"]


@pytest.mark.parametrize("name", ["S", "M", "L", "step"])
def test_problem_is_the_contracts(name):
    """random(D, H, seed=0) and default_rng(1).standard_normal((B, T, D)) in float32."""
    cfg = suite.CONFIGS[name]
    model, x = suite.make_problem(cfg)
    want = fs.SelfAttentionRNN.random(cfg.D, cfg.H, window=cfg.window, seed=0)
    assert (model.score, model.recurrence, model.window, model.dtype) == (
        "dot", "c", cfg.window, np.float32)
    for k, v in want.params.items():
        assert np.array_equal(model.params[k], v), k
    assert x.dtype == np.float32 and np.array_equal(
        x, np.random.default_rng(1).standard_normal((cfg.B, cfg.T, cfg.D)).astype(np.float32))


def _flops_by_the_contract(B, T, D, H, window, score, recurrence, Ha):
    """SPEC section 6, counted step by step: per valid step the update (and W_h h), then
    4H per attended position, plus the score's own terms."""
    total = 0
    for _ in range(B):
        for t in range(1, T + 1):
            attended = t if window is None else len(range(max(1, t - window + 1), t + 1))
            total += 2 * H * (D + H) + 4 * H * attended
            total += 2 * H * H if recurrence == "hc" else 0
            total += 2 * H * H if score == "general" else 0
            total += 4 * Ha * H if score in ("kq", "additive") else 0
            total += 3 * Ha * attended if score == "additive" else 0
    return total


@pytest.mark.parametrize("Ha", [None, 3])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("recurrence", ["c", "hc"])
@pytest.mark.parametrize("score", ["dot", "scaled_dot", "general", "kq", "additive"])
def test_useful_flops_follow_the_contract(score, recurrence, window, Ha):
    cfg = bench.Config("x", 2, 5, 4, 6, window=window, score=score, recurrence=recurrence)
    keyed = score in ("kq", "additive")
    want = _flops_by_the_contract(2, 5, 4, 6, window, score, recurrence,
                                  (Ha or 6) if keyed else 0)
    assert suite.useful_flops(cfg, Ha if keyed else None) == want


def test_a_wrong_result_fails_the_parity_check_before_anything_counts(monkeypatch, capsys):
    """A runner whose c is off by 1e-3 in one element is flagged (error and tolerance in the
    record, PARITY FAILURE and exit status 1), not reported as a result."""
    real_runner = suite.runner

    def off_by_a_bit(cfg, model, x, who):
        run = real_runner(cfg, model, x, who)
        if who != "numba":
            return run

        def wrong():
            h, c = run()
            c = np.array(c)
            c[0, -1, 0] += 1e-3
            return h, c
        return wrong

    monkeypatch.setattr(suite, "runner", off_by_a_bit)
    recs = suite.run_config(bench.QUICK["S"], ["numba", "numpy"], 1)
    by = {r["backend"]: r for r in recs}
    assert not by["numba"]["within_tolerance"] and by["numpy"]["within_tolerance"]
    assert abs(by["numba"]["max_abs_err"] - 1e-3) < 1e-4
    row = [ln for ln in suite.format_table(recs).splitlines() if ln.startswith("  numba")]
    assert len(row) == 1 and row[0].split()[-2:] == [f"{by['numba']['max_abs_err']:.1e}", "NO"]
    import argparse
    parser = argparse.ArgumentParser()
    suite.add_arguments(parser)
    args = parser.parse_args(["--quick", "--config", "S", "--backends", "numba,numpy",
                              "--repeat", "1", "--no-progress"])
    assert suite.run_cli(args, parser) == 1
    assert "PARITY FAILURE" in capsys.readouterr().out


def test_record_figures_are_computed_from_the_timed_runs():
    cfg = bench.QUICK["M"]
    recs = suite.run_config(cfg, ["numba", "numpy"], 3)
    by = {r["backend"]: r for r in recs}
    model, x = suite.make_problem(cfg)
    ref = model.astype("float64").forward(x.astype(np.float64), backend="numpy")
    flops = suite.useful_flops(cfg, model.attention_size)
    for who, r in by.items():
        assert r["min_s"] == min(r["times_s"]) and len(r["times_s"]) == 3
        assert r["median_s"] == sorted(r["times_s"])[1]
        assert r["gflops"] == pytest.approx(flops / r["min_s"] / 1e9)
        assert r["speedup_vs_numpy"] == pytest.approx(by["numpy"]["min_s"] / r["min_s"])
        out = model.forward(x, backend=who)
        err = max(np.abs(out.h - ref.h).max(), np.abs(out.c - ref.c).max())
        assert r["max_abs_err"] == pytest.approx(float(err), rel=1e-6, abs=1e-12)
        assert r["max_abs_err"] > 0          # float32 against the float64 reference


def test_the_step_configuration_calls_step_once_per_token_and_forward_uses_all_cores(
        monkeypatch):
    calls = {"step": 0, "forward_threads": []}
    real_step, real_forward = fs.SelfAttentionRNN.step, fs.SelfAttentionRNN.forward

    def step(self, *a, **k):
        calls["step"] += 1
        return real_step(self, *a, **k)

    def forward(self, *a, **k):
        calls["forward_threads"].append(k.get("num_threads"))
        return real_forward(self, *a, **k)

    monkeypatch.setattr(fs.SelfAttentionRNN, "step", step)
    monkeypatch.setattr(fs.SelfAttentionRNN, "forward", forward)
    step_cfg = bench.QUICK["step"]
    model, x = suite.make_problem(step_cfg)
    suite.runner(step_cfg, model, x, "numba")()
    assert calls["step"] == step_cfg.T and calls["forward_threads"] == []
    cfg = bench.QUICK["S"]
    model, x = suite.make_problem(cfg)
    suite.runner(cfg, model, x, "numba")()
    assert calls["step"] == step_cfg.T and calls["forward_threads"] == [None]


def test_every_available_backend_is_benchmarked_by_default():
    names = suite.available_runners()
    for name, bi in fs.backends().items():
        assert (name in names) == bi.available, name
    assert "numpy" in names


def test_info_names_versions_cores_simd_and_why_a_backend_cannot_run(monkeypatch):
    import io
    import numba
    import cffi
    from fastsarnn import _registry, _sysinfo, cli
    monkeypatch.delenv("FASTSARNN_BACKEND", raising=False)
    monkeypatch.setitem(_registry._loaded, "cuda",
                        _registry._UnavailableBackend("cuda", "no GPU in this test"))
    out = io.StringIO()
    assert cli.info(out) == 0
    text = out.getvalue()
    for dist, version in (("fastsarnn", fs.__version__), ("numpy", np.__version__),
                          ("numba", numba.__version__), ("cffi", cffi.__version__)):
        assert f"{dist}" in text and version in text, dist
    cpu = _sysinfo.cpu_info()
    assert f"cores     {cpu['cores']}" in text and cpu["cores"] == os.cpu_count()
    simd_line = [ln for ln in text.splitlines() if ln.startswith("simd ")]
    assert len(simd_line) == 1
    if not os.path.exists("/proc/cpuinfo"):        # the flags below are Linux's names
        return
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    for flag in ("sse4_2", "avx2", "avx512f"):
        assert (flag in cpu["simd"]) == (flag in flags), flag
        assert (flag in simd_line[0].split()) == (flag in flags), flag
    assert "cuda   unavailable: no GPU in this test" in text


def test_progress_is_shown_on_stderr_unless_turned_off(tmp_path):
    args = ["--quick", "--config", "S", "--backends", "numpy", "--repeat", "2"]
    shown = run_cli(args, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "fastsarnn bench" in shown.stderr and "2/2 runs" in shown.stderr, shown.stderr
    quiet = run_cli(args + ["--no-progress"], tmp_path)
    assert quiet.returncode == 0 and "runs" not in quiet.stderr, quiet.stderr


def test_each_torch_peer_name_makes_its_loop(monkeypatch):
    """torch: the eager loop on the CPU; torch-cuda: on the GPU; torch-cuda-graph: the same
    loop captured as a CUDA graph (SPEC section 6)."""
    from fastsarnn.bench import peers
    made = []
    monkeypatch.setattr(peers, "TorchLoop", lambda model, device: made.append(
        ("eager", device)))
    monkeypatch.setattr(peers, "TorchGraphLoop", lambda model, device: made.append(
        ("graph", device)))
    for name in ("torch", "torch-cuda", "torch-cuda-graph"):
        peers.make_peer(name, None)
    assert made == [("eager", "cpu"), ("eager", "cuda"), ("graph", "cuda")]
