"""What is particular to the C backend: ISA dispatch, sanitizer build flag, its own argument
checks (called directly, bypassing the model's), and an install without a compiler."""

import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

import fastsarnn as fs
from _helpers import make_model, make_x, max_err, reference, tol

pytestmark = pytest.mark.skipif(
    not fs.backends()["c"].available and "c" not in os.environ.get(
        "FASTSARNN_REQUIRE_BACKENDS", ""),
    reason=f"C backend unavailable: {fs.backends()['c'].reason}")


@pytest.fixture(scope="module")
def c_ext():
    info = fs.backends()["c"]
    if not info.available:
        pytest.fail(f"C backend required but unavailable: {info.reason}")
    from fastsarnn.backends import c_ext
    return c_ext


def test_isa_dispatch_and_generic_override(c_ext, tmp_path):
    expect = os.environ.get("FASTSARNN_C_ISA") or (
        "generic" if os.environ.get("FASTSARNN_C_GENERIC", "") not in ("", "0") else None)
    if expect and expect != "auto":
        assert c_ext.isa() == expect           # a CI stage per variant runs that variant
    else:
        assert c_ext.isa() == c_ext.supported_isas()[-1]   # auto: the widest this CPU runs
    code = ("import numpy as np, fastsarnn as fs\n"
            "from fastsarnn.backends import c_ext\n"
            "m = fs.SelfAttentionRNN.random(5, 16, score='additive', seed=0)\n"
            "x = np.random.default_rng(1).standard_normal((3, 20, 5))\n"
            "print(c_ext.isa()); print(repr(m.forward(x, backend='c').c.tobytes().hex()))\n")
    env = dict(os.environ, FASTSARNN_C_GENERIC="1")
    env.pop("FASTSARNN_C_ISA", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "generic"
    generic_c = np.frombuffer(bytes.fromhex(eval(out.stdout.splitlines()[1])), np.float32)
    m = fs.SelfAttentionRNN.random(5, 16, score="additive", seed=0)
    x = np.random.default_rng(1).standard_normal((3, 20, 5))
    ref = reference(m, x).c.ravel()
    assert max_err(generic_c, ref) <= tol(m)


def test_sanitizer_flag_matches_the_build(c_ext):
    """The normal build is not sanitized and has no test hooks; the .ci sanitizer stage sets
    FASTSARNN_EXPECT_SANITIZED=1 and gets both."""
    want = os.environ.get("FASTSARNN_EXPECT_SANITIZED", "0") == "1"
    assert c_ext.sanitized() == want
    assert c_ext.testing() == (want or os.environ.get("FASTSARNN_C_TESTING", "") == "1")


def test_score_and_recurrence_codes_agree_with_the_c_enums(c_ext):
    lib = c_ext.lib
    assert lib.SARNN_NSCORES == len(fs._config.SCORES)
    assert lib.SARNN_NRECURRENCES == len(fs._config.RECURRENCES)
    for code, name in enumerate(fs._config.SCORES):
        assert getattr(lib, "SARNN_SCORE_" + name.upper()) == code, name
    for code, name in enumerate(fs._config.RECURRENCES):
        assert getattr(lib, "SARNN_RECURRENCE_" + name.upper()) == code, name
    for name in fs._config.SCORES:
        assert make_model(score=name, H=3)._kernel.score_code == getattr(
            lib, "SARNN_SCORE_" + name.upper())


def _supported():
    if not fs.backends()["c"].available:
        return []
    from fastsarnn.backends import c_ext
    return list(c_ext.supported_isas())


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_kernel_variant_matches_the_reference(c_ext, isa):
    """Forced variant: batch over threads, one stream split over threads, and step."""
    if isa not in c_ext.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    old = c_ext.set_isa(isa)
    old_min = c_ext.set_split_min(1)
    c_ext.set_split_guard(chunk_min=1)
    c_ext.set_split_choice("always")
    try:
        assert c_ext.isa() == isa
        for score, window, dtype in [("dot", None, "float32"), ("additive", 4, "float64"),
                                     ("kq", None, "float64"), ("general", 3, "float32")]:
            model = make_model(score=score, recurrence="hc", window=window, D=4, H=19, Ha=7,
                               dtype=dtype)
            x = make_x(3, 11, 4)
            ref = reference(model, x, lengths=[11, 4, 0], return_attention=True)
            got = model.forward(x, lengths=[11, 4, 0], return_attention=True, backend="c",
                                num_threads=2)
            assert max_err(got.c, ref.c) <= tol(model)
            assert max_err(got.attention, ref.attention) <= tol(model)
            one = reference(model, x[:1], return_attention=True)
            split = model.forward(x[:1], return_attention=True, backend="c", num_threads=2)
            assert c_ext.last_call_stats()["steps_split"] > 0
            assert max_err(split.c, one.c) <= tol(model)
            assert max_err(split.attention, one.attention) <= tol(model)
            st = model.init_state(1)
            cs = [model.step(x[0, t], st, backend="c")[1] for t in range(11)]
            assert max_err(np.stack(cs), one.c[0]) <= tol(model)
    finally:
        c_ext.set_isa(old)
        c_ext.set_split_choice("measure")
        c_ext.set_split_min(old_min)
        c_ext.set_split_guard(chunk_min=fs._config.C_SPLIT_CHUNK_MIN)


def test_variant_override_errors(c_ext, tmp_path):
    with pytest.raises(ValueError, match="unknown C kernel variant 'sse9'"):
        c_ext.set_isa("sse9")
    before = c_ext.isa()
    if c_ext.testing():            # a variant this CPU "lacks": refused, nothing changes
        c_ext.lib.sarnn_test_hide_isa(c_ext.lib.SARNN_ISA_AVX2, 1)
        try:
            with pytest.raises(ValueError, match="cannot run on this CPU"):
                c_ext.set_isa("avx2")
            assert "avx2" not in c_ext.supported_isas()
        finally:
            c_ext.lib.sarnn_test_hide_isa(c_ext.lib.SARNN_ISA_AVX2, 0)
    else:
        missing = [i for i in c_ext.ISAS if i not in c_ext.supported_isas()]
        for name in missing:
            with pytest.raises(ValueError, match="cannot run on this CPU"):
                c_ext.set_isa(name)
    assert c_ext.isa() == before
    # The environment variable: a bad variant makes the backend unavailable, saying why.
    code = ("import fastsarnn as fs\nprint(fs.backends()['c'])\n"
            "from fastsarnn.backends import c_ext\nprint(c_ext.isa())\n")
    for value, expect in [("generic", "generic"), ("avx2", "avx2"), ("bogus", None)]:
        env = dict(os.environ, FASTSARNN_C_ISA=value)
        env.pop("FASTSARNN_C_GENERIC", None)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120, cwd=str(tmp_path))
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        if expect is None:
            assert "available=False" in lines[0] and "FASTSARNN_C_ISA='bogus'" in lines[0]
        elif expect in c_ext.supported_isas():
            assert "available=True" in lines[0] and lines[1] == expect


def _raw_call(c_ext, model, st, x, lengths, attn=None, **override):
    """sarnn_forward with the model's own structs, some fields overridden."""
    ffi, lib = c_ext.ffi, c_ext.lib
    m = ffi.new("sarnn_model *", c_ext._model_struct(model._kernel)[0])
    s = ffi.new("sarnn_state *", c_ext._state_struct(st)[0])
    for k, v in override.items():
        target, field = (m, k[2:]) if k.startswith("m_") else (s, k[2:])
        setattr(target, field, v)
    B, T = x.shape[:2]
    out = np.zeros((B, T, model.hidden_size), model.dtype)
    out2 = np.zeros_like(out)
    return lib.sarnn_forward(m, s, ffi.from_buffer(x), B, T,
                             ffi.from_buffer("int64_t[]", lengths), ffi.from_buffer(out),
                             ffi.from_buffer(out2),
                             ffi.NULL if attn is None else ffi.from_buffer(attn),
                             0 if attn is None else attn.shape[2], 0, 0)


def test_kernel_checks_its_own_arguments(c_ext):
    ffi = c_ext.ffi
    model = make_model(score="kq", D=4, H=6, Ha=3, dtype="float32")
    st = model.init_state(2, capacity=4)
    x = make_x(2, 3, 4).astype(np.float32)
    ok = np.array([3, 3], np.int64)
    assert _raw_call(c_ext, model, st, x, ok) == 0
    st = model.init_state(2, capacity=4)
    before = [a.copy() for a in (st.hist, st.h, st.positions)]
    cases = {
        "capacity too small": dict(s_capacity=2),
        "batch mismatch": dict(s_batch=3),
        "null hist": dict(s_hist=ffi.NULL),
        "null keys for kq": dict(s_keys=ffi.NULL),
        "bad score": dict(m_score=9),
        "bad dtype": dict(m_dtype=7),
        "missing W_q": dict(m_W_q=ffi.NULL),
        "H zero": dict(m_H=0),
        "negative window": dict(m_window=-1),
        "window vs capacity": dict(m_window=3),
    }
    dot = make_model(score="dot", D=4, H=6, dtype="float32")
    dst = dot.init_state(2, capacity=4)
    assert _raw_call(c_ext, dot, dst, x, ok, m_Ha=6 + 100) != 0       # Ha for a keyless score
    assert dst.positions.tolist() == [0, 0] and not dst.hist.any()
    for name, override in cases.items():
        rc = _raw_call(c_ext, model, st, x, ok, **override)
        assert rc != 0, name
        assert ffi.string(c_ext.lib.sarnn_error_message(rc)) != b"ok"
    assert _raw_call(c_ext, model, st, x, np.array([4, 0], np.int64)) != 0   # length > T
    assert _raw_call(c_ext, model, st, x, np.array([-1, 0], np.int64)) != 0
    small_attn = np.zeros((2, 3, 2), np.float32)
    assert _raw_call(c_ext, model, st, x, ok, attn=small_attn) != 0         # too few columns
    st.positions[1] = -5
    assert _raw_call(c_ext, model, st, x, ok) != 0
    st.positions[1] = 0
    for a, b in zip((st.hist, st.h, st.positions), before):
        assert np.array_equal(a, b)                 # rejected calls wrote nothing


def test_kernel_error_becomes_value_error(c_ext, monkeypatch):
    model = make_model(D=4, H=6)
    st = model.init_state(1, capacity=2)
    monkeypatch.setattr(st, "_ensure_capacity", lambda needed: None)   # a model-layer bug
    with pytest.raises(ValueError, match="capacity"):
        model.forward(make_x(1, 5, 4), state=st, backend="c")
    assert st.positions.tolist() == [0]


NO_COMPILER = {"CC": "/bin/false", "LDSHARED": "/bin/false"}
C_STATUS = ("import fastsarnn as fs, numpy as np; i = fs.backends()['c']; "
            "print(i.available); print(i.reason); "
            "print(fs.SelfAttentionRNN.random(2, 3).forward(np.ones((4, 2))).h.shape)")


def _copy_checkout(dst):
    """The repository's tracked files (no build products) copied to ``dst``."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
    files = subprocess.run(["git", "-C", root, "ls-files"], check=True, capture_output=True,
                           text=True).stdout.split()
    for f in files:
        out = dst / f
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(open(os.path.join(root, f), "rb").read())
    return dst


def _c_status(path, cwd):
    """(available, reason, shape of a forward) of the fastsarnn importable from ``path``."""
    out = subprocess.run([sys.executable, "-c", C_STATUS], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(path)), timeout=120,
                         cwd=str(cwd))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _built(pkg):
    return [f for f in os.listdir(pkg) if f.startswith("_csarnn") and f.endswith(".so")]


def _plant_old_extension(src):
    """What an earlier build of the checkout ``src`` leaves: the extension in its build
    folder (where pip builds) and, after an in-place (editable) build, in the package.
    Not a loadable library: only whether a later build keeps it matters here."""
    lib = src / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    for pkg in (lib / "fastsarnn", src / "fastsarnn"):
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "_csarnn.abi3.so").write_bytes(b"an extension built from older sources")


@pytest.mark.skipif(os.environ.get("FASTSARNN_SKIP_SLOW_INSTALL") == "1",
                    reason="FASTSARNN_SKIP_SLOW_INSTALL=1")
def test_install_without_a_compiler_still_works_and_installs_no_old_extension(tmp_path):
    """A failed C build must not abort pip install; backends() then says why. Where an
    earlier build left its extension in the checkout's build folder, the failed build must
    not install that old extension in place of the sources it failed on."""
    src = _copy_checkout(tmp_path / "src")
    _plant_old_extension(src)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--target", str(tmp_path / "site"),
                          str(src)],
                         env=dict(os.environ, **NO_COMPILER), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not _built(tmp_path / "site" / "fastsarnn")
    available, reason, shape = _c_status(tmp_path / "site", tmp_path)
    assert available == "False"
    assert "failed to build" in reason
    assert shape == "(4, 3)"


@pytest.mark.skipif(os.environ.get("FASTSARNN_SKIP_SLOW_INSTALL") == "1",
                    reason="FASTSARNN_SKIP_SLOW_INSTALL=1")
def test_a_failed_in_place_build_leaves_no_old_extension_in_the_source_tree(tmp_path):
    """An editable install builds in place (setuptools' ``build_ext --inplace``): after a
    change to csrc/ that does not compile, the checkout must not keep running the kernels
    of the last good build; the next good build clears the recorded error."""
    src = _copy_checkout(tmp_path / "src")
    _plant_old_extension(src)
    pkg = src / "fastsarnn"
    error_file = pkg / "_csarnn_build_error.txt"

    def build_in_place(**env):
        res = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                             cwd=str(src), env=dict(os.environ, **env), capture_output=True,
                             text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]

    build_in_place(**NO_COMPILER)
    assert not _built(pkg) and error_file.exists()
    available, reason, _ = _c_status(src, tmp_path)
    assert available == "False" and "failed to build" in reason
    build_in_place()
    assert _built(pkg) and not error_file.exists()
    assert _c_status(src, tmp_path)[0] == "True"


@pytest.mark.parametrize("score,window", [("dot", None), ("kq", 3), ("additive", None),
                                          ("scaled_dot", 5), ("general", 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_stream_split_over_threads(c_ext, score, window, dtype):
    """Batch 1 on 2 threads splits each step's attended positions: same numbers, for forward
    (with attention), streaming chunks and step, whatever the split threshold."""
    model = make_model(score=score, recurrence="hc", window=window, D=4, H=7, Ha=5,
                       dtype=dtype)
    x = make_x(1, 13, 4)
    ref = reference(model, x, return_attention=True)
    old = c_ext.set_split_min(1)
    try:
        for split_min in (1, 2, 5):
            c_ext.set_split_min(split_min)
            got = model.forward(x, return_attention=True, backend="c", num_threads=2)
            assert max_err(got.c, ref.c) <= tol(model)
            assert max_err(got.attention, ref.attention) <= tol(model)
            st = model.init_state(1, capacity=1)
            a = model.forward(x[:, :6], state=st, backend="c", num_threads=2).c
            b = np.stack([model.step(x[:, t], st, backend="c")[1] for t in range(6, 13)], 1)
            assert max_err(np.concatenate([a, b], 1), ref.c) <= tol(model)
            assert st.positions.tolist() == [13]
    finally:
        c_ext.set_split_min(old)
    assert old == c_ext.set_split_min(old)


def test_compact_attention_matches_dense(c_ext):
    """compact_attention=True: column k of row r = the dense row's column first + k."""
    old = c_ext.set_split_min(1)
    c_ext.set_split_guard(chunk_min=2)
    c_ext.set_split_choice("always")       # the same chunks in both runs: equal bits
    try:
        for score, window, dtype, B in [("dot", 3, "float32", 3), ("additive", 5, "float64", 1),
                                        ("kq", 1, "float64", 2), ("general", 6, "float32", 1)]:
            model = make_model(score=score, window=window, D=4, H=9, Ha=5, dtype=dtype)
            p = model._kernel
            x = make_x(B, 13, 4).astype(dtype)
            lengths = np.array([13, 7, 0][:B], np.int64)
            for nt in (1, 2):
                dense_st, comp_st = model.init_state(B), model.init_state(B)
                for lo, hi in [(0, 5), (5, 13)]:              # streaming: positions before
                    xs = np.ascontiguousarray(x[:, lo:hi])
                    ln = np.clip(lengths - lo, 0, hi - lo).astype(np.int64)
                    t0 = int(dense_st.positions.max())
                    pos = dense_st.positions.copy()
                    outs = []
                    for st, cols, compact in [(dense_st, t0 + hi - lo, False),
                                              (comp_st, window, True)]:
                        h = np.zeros((B, hi - lo, 9), dtype)
                        c = np.zeros_like(h)
                        a = np.zeros((B, hi - lo, cols), dtype)
                        c_ext.forward(p, xs, ln, st, h, c, a, nt, compact_attention=compact)
                        outs.append((h, c, a))
                    (hd, cd, ad), (hc, cc, ac) = outs
                    assert np.array_equal(hd, hc) and np.array_equal(cd, cc)
                    for b in range(B):
                        for r in range(int(ln[b])):
                            q = int(pos[b]) + r
                            first = max(0, q - window + 1)
                            want = np.zeros(window, dtype)
                            want[:q - first + 1] = ad[b, r, first:q + 1]
                            assert np.array_equal(ac[b, r], want), (score, b, r)
                        assert not ac[b, int(ln[b]):].any()
    finally:
        c_ext.set_split_choice("measure")
        c_ext.set_split_min(old)
        c_ext.set_split_guard(chunk_min=fs._config.C_SPLIT_CHUNK_MIN)


def test_compact_attention_checks_its_columns(c_ext):
    model = make_model(window=4, D=4, H=6)
    st = model.init_state(1)
    x = make_x(1, 3, 4)
    h = np.zeros((1, 3, 6))
    with pytest.raises(ValueError, match="compact attention"):
        c_ext.forward(model._kernel, x, np.array([3]), st, h, h.copy(), np.zeros((1, 3, 3)),
                      1, compact_attention=True)
    nowin = make_model(D=4, H=6)
    with pytest.raises(ValueError, match="compact attention"):
        c_ext.forward(nowin._kernel, x, np.array([3]), nowin.init_state(1), h, h.copy(),
                      np.zeros((1, 3, 4)), 1, compact_attention=True)
    assert st.positions.tolist() == [0]


def _needs_hooks(c_ext):
    if not c_ext.testing():
        if os.environ.get("FASTSARNN_EXPECT_SANITIZED") == "1":
            pytest.fail("the sanitizer build must carry the test hooks (SARNN_TESTING)")
        pytest.skip("built without the test hooks (FASTSARNN_C_TESTING=1 or the sanitizer "
                    "build has them); csrc/tests/driver.c covers them in every run")


@pytest.mark.parametrize("B,nt", [(3, 2), (3, 1), (1, 1), (1, 2)])
def test_out_of_memory_changes_no_state(c_ext, B, nt):
    """An allocation failure (injected) fails the call before any row or output is touched:
    batch over threads, serial, and a split single stream."""
    _needs_hooks(c_ext)
    model = make_model(D=4, H=6, dtype="float32")
    st = model.init_state(B)
    model.forward(make_x(B, 3, 4), state=st, backend="c")
    x = make_x(B, 5, 4, seed=3)
    old = c_ext.set_split_min(1)
    c_ext.set_split_guard(chunk_min=1)
    try:
        before = [a.copy() for a in (st.hist, st.h, st.c, st.positions)]
        for call in ("forward", "step"):
            failed = []
            for n in range(1, 4):    # the first, second, third allocation of the call fails
                work = st.copy()
                c_ext.lib.sarnn_test_fail_alloc(n)
                try:
                    if call == "forward":
                        model.forward(x, state=work, backend="c", num_threads=nt)
                    else:
                        model.step(x[:, 0], work, backend="c", num_threads=nt)
                except ValueError as exc:
                    assert "out of memory" in str(exc)
                    failed.append(n)
                    for a, b in zip((work.hist, work.h, work.c, work.positions), before):
                        assert np.array_equal(a, b), (call, n)
                c_ext.lib.sarnn_test_fail_alloc(0)
            assert failed and failed[0] == 1, (call, failed)
        for a, b in zip((st.hist, st.h, st.c, st.positions), before):
            assert np.array_equal(a, b)
        got = model.forward(x, state=st, backend="c", num_threads=nt)
        ref = reference(model, np.concatenate([make_x(B, 3, 4), x], 1))
        assert max_err(got.c, ref.c[:, 3:]) <= tol(model)
    finally:
        c_ext.lib.sarnn_test_fail_alloc(0)
        c_ext.set_split_min(old)
        c_ext.set_split_guard(chunk_min=fs._config.C_SPLIT_CHUNK_MIN)


def test_a_stalled_helper_makes_the_split_fall_back(c_ext):
    """A helper that stalls at step 40 (injected) makes the leader run the rest of the call
    serially; the result is the serial result."""
    _needs_hooks(c_ext)
    model = make_model(D=4, H=16, dtype="float64")
    x = make_x(1, 100, 4)
    serial = model.forward(x, backend="c", num_threads=1, return_attention=True)
    old = c_ext.set_split_min(1)
    c_ext.set_split_guard(chunk_min=4)
    c_ext.set_split_choice("always")
    try:
        c_ext.lib.sarnn_test_stall_helper(40, 30_000_000)
        got = model.forward(x, backend="c", num_threads=2, return_attention=True)
        stats = c_ext.last_call_stats()
    finally:
        c_ext.lib.sarnn_test_stall_helper(-1, 0)
        c_ext.set_split_choice("measure")
        c_ext.set_split_min(old)
        c_ext.set_split_guard(chunk_min=fs._config.C_SPLIT_CHUNK_MIN)
    assert stats["fallback_step"] == 40
    assert stats["steps_split"] == 40 - 7 + 1          # steps 7..40 had >= 2 chunks of 4
    assert max_err(got.c, serial.c) <= 1e-12
    assert max_err(got.attention, serial.attention) <= 1e-12


def _busy(n):
    code = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def test_split_choice_is_validated_and_forces_the_split(c_ext):
    model = make_model(D=4, H=16)
    x = make_x(1, 39, 4)       # steps 7..38 have >= 2 chunks of 4 positions: 32 eligible
    old = c_ext.set_split_min(1)
    try:
        with pytest.raises(ValueError, match="unknown split choice"):
            c_ext.set_split_choice("sometimes")
        for choice, expect in [("always", 32), ("never", 0)]:
            c_ext.set_split_guard(chunk_min=4)
            c_ext.set_split_choice(choice)
            model.forward(x, backend="c", num_threads=2)
            assert c_ext.last_call_stats()["steps_split"] == expect, choice
        c_ext.set_split_choice("measure")           # measured: split probed first
        c_ext.set_split_guard(chunk_min=4)
        model.forward(x, backend="c", num_threads=2)
        stats = c_ext.last_call_stats()
        assert stats["steps_split"] == 16      # a probe of split, then one of serial
        assert stats["fallback_step"] == -1    # probes are not fallbacks
    finally:
        c_ext.set_split_choice("measure")
        c_ext.set_split_min(old)
        c_ext.set_split_guard(chunk_min=fs._config.C_SPLIT_CHUNK_MIN)


@pytest.mark.parametrize("per_core", [1, 2])
def test_single_stream_under_competing_processes(c_ext, per_core):
    """Busy-loop processes on every core (N and 2N): the split single stream stays exact,
    every step runs once, only eligible steps (>= 64 positions) are split, and a fallback
    lies among them. (The fallback itself is forced deterministically by the stall test.)"""
    cores = os.cpu_count() or 1
    model = fs.SelfAttentionRNN.random(16, 64, seed=0)
    x = np.random.default_rng(1).standard_normal((1, 600, 16)).astype(np.float32)
    ref = reference(model, x)
    old = c_ext.set_split_min(64)
    procs = _busy(per_core * cores)
    try:
        for _ in range(5):
            got = model.forward(x, backend="c")
            stats = c_ext.last_call_stats()
            assert max_err(got.c, ref.c) <= tol(model)
            assert max_err(got.h, ref.h) <= tol(model)
            assert stats["steps"] == 600
            assert stats["steps_helped"] <= stats["steps_split"] <= 600 - 63
            assert stats["fallback_step"] == -1 or 63 <= stats["fallback_step"] < 600
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        c_ext.set_split_min(old)
