#!/usr/bin/env bash
# One-command GPU check of the "cuda" backend (issue 13), on a machine with an NVIDIA GPU:
#   1. the CUDA parity, error and hardening suites at the production block size
#      (FASTSARNN_TEST_CUDA_BLOCK = fastsarnn._config.CUDA_BLOCK_SIZE, unless
#      FASTSARNN_GPU_BLOCK says otherwise), with their slowest tests;
#   2. fastsarnn bench with the GPU peers: --backends cuda,torch-cuda,torch-cuda-graph,c
#      (c left out where the C backend was not built), configurations S, M, L, step, then
#      XL in a second run (its float64 NumPy reference alone takes about a minute), each
#      with the runners' untimed first run (compilation, graph capture);
#   2b. benchmarks/cuda_cold_start.py: a fresh process's first forward (S) with Numba's
#      on-disk kernel cache off, on and empty, on and filled (CUDA_DISK_CACHE);
#   3. benchmarks/cuda_config_compare.py: S, step, M with a sequence split over 1, 2, 4, 8,
#      16 blocks and "auto" (checked against the float64 reference, then timed);
#   4. benchmarks/cuda_step_profile.py: where a token of model.step spends its time;
#      benchmarks/cuda_phase_costs.py: what a kernel step's fixed part, its attention,
#      one more matrix-vector product and a token of step cost, on S and M;
#   5. each setting named in FASTSARNN_GPU_SETTINGS (space-separated NAME=V1,V2,..., for
#      example "CUDA_MATVEC_WORDS=8,16,32 CUDA_ROWS_PER_WARP=4,8"; none by default)
#      compared on S and M, or on the configurations named after an @ (for example
#      CUDA_MIN_BLOCKS_PER_SM=1,2@XL or CUDA_MATVEC_WORDS=8,16@S,M,XL), by
#      benchmarks/cuda_config_compare.py;
#   6. where .baseline/ holds another revision's source tree (`bash benchmarks/gpu_check.sh
#      baseline REV` makes it, where git is), that revision and this one timed in turn on
#      S, M and step by benchmarks/cuda_config_compare.py (each checked against the
#      float64 reference first): a before/after on one GPU, in one call.
# It prints the suites' summary lines and the bench tables, installs nothing from the
# network, and each part has its own time limit (about 5 minutes in all on an H200).
#
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh          # on the GPU machine (python3 must have numba,
#                                         # numba-cuda, numpy, torch, pytest, hypothesis)
#   bash benchmarks/gpu_check.sh fetch    # on a machine with pip access: put the wheels
#                                         # the GPU machine lacks (cffi, for the C backend)
#                                         # into .whl/, to carry along
#   bash benchmarks/gpu_check.sh baseline REV   # where git is: REV's tree into .baseline/
#                                               # (git-ignored), to carry along for part 6
# Environment: PYTHON (default python3); OUT (if set, the bench JSON and logs go there);
# FASTSARNN_GPU_BLOCK (the suites' block size, default _config.CUDA_BLOCK_SIZE);
# FASTSARNN_GPU_WORKERS (pytest-xdist processes for the suites where xdist is installed,
# default 12; kernels compile per process, so tests run side by side);
# FASTSARNN_GPU_SETTINGS (part 5); FASTSARNN_GPU_TESTS_S, _BENCH_S, _XL_S, _SPLIT_S,
# _PROFILE_S, _PHASES_S, _SETTINGS_S (each setting), _BASELINE_S, _COLD_S (each part's time
# limit, seconds).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TESTS_LIMIT=${FASTSARNN_GPU_TESTS_S:-120}
BENCH_LIMIT=${FASTSARNN_GPU_BENCH_S:-90}
XL_LIMIT=${FASTSARNN_GPU_XL_S:-120}
SPLIT_LIMIT=${FASTSARNN_GPU_SPLIT_S:-40}
PROFILE_LIMIT=${FASTSARNN_GPU_PROFILE_S:-30}
PHASES_LIMIT=${FASTSARNN_GPU_PHASES_S:-90}
BASELINE_LIMIT=${FASTSARNN_GPU_BASELINE_S:-90}
SETTINGS_LIMIT=${FASTSARNN_GPU_SETTINGS_S:-60}
COLD_LIMIT=${FASTSARNN_GPU_COLD_S:-90}

if [ "${1:-}" = "fetch" ]; then   # wheels for CPython 3.12 on x86-64 Linux
    cd "$ROOT"
    EXCLUDE=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl cffi==2.0.0 pycparser==2.23
fi

if [ "${1:-}" = "baseline" ]; then   # another revision's source tree, for part 6
    [ -n "${2:-}" ] || { echo "usage: bash benchmarks/gpu_check.sh baseline REV"; exit 2; }
    cd "$ROOT"
    EXCLUDE=$(git rev-parse --git-path info/exclude)
    grep -qx '/.baseline/' "$EXCLUDE" 2>/dev/null || echo '/.baseline/' >> "$EXCLUDE"
    NEW=$(mktemp -d)    # a failed archive leaves the old .baseline/ in place
    git archive "$2" | tar -x -C "$NEW" && git rev-parse "$2" > "$NEW/REVISION" \
        || { rm -rf "$NEW"; exit 1; }
    rm -rf .baseline && mv "$NEW" .baseline
    exit
fi

START=$(date +%s)
stopped() { [ "$1" = 124 ] || [ "$1" = 137 ]; }   # timeout's codes: TERM, then KILL
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
SITE=$(mktemp -d)
OTHER_PATHS=${PYTHONPATH:-}
export PYTHONPATH="$SITE${OTHER_PATHS:+:$OTHER_PATHS}"
export PYTHONUNBUFFERED=1
cd "$ROOT"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --target "$SITE" . > "$LOGS/install.log" 2>&1 || { cat "$LOGS/install.log"; exit 1; }
cd "$SITE"   # import the installed package, never the source tree
timeout -k 10 60 "$PY" -m fastsarnn info 2>&1 | tee "$LOGS/info.log"
PROD=$("$PY" -c "from fastsarnn import _config; print(_config.CUDA_BLOCK_SIZE)")
BLOCK=${FASTSARNN_GPU_BLOCK:-$PROD}
# The suites' time goes mostly into compiling kernels (seconds per variant, per process):
# with pytest-xdist, tests spread over processes side by side (one file per process would
# leave the largest file, the parity suite, on one process).
PARALLEL=()
if "$PY" -c "import xdist" 2>/dev/null; then
    PARALLEL=(-n "${FASTSARNN_GPU_WORKERS:-12}" --dist load)
fi
# the C backend is a reference point; the bench runs without it where it was not built
PEERS=cuda,torch-cuda,torch-cuda-graph
if grep -qE '^ +c +available' "$LOGS/info.log"; then
    PEERS=$PEERS,c
else
    echo "(the C backend is unavailable here: the bench runs without it)"
fi

echo "=== CUDA suites at block size $BLOCK (production: $PROD threads), limit ${TESTS_LIMIT}s"
FASTSARNN_TEST_BACKENDS=cuda FASTSARNN_REQUIRE_BACKENDS=cuda FASTSARNN_TEST_CUDA_BLOCK=$BLOCK \
    timeout -k 10 "$TESTS_LIMIT" "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" \
    "${PARALLEL[@]}" --durations=8 \
    -c "$ROOT/pyproject.toml" "$ROOT/tests/test_cuda.py" "$ROOT/tests/test_parity.py" \
    "$ROOT/tests/test_equations.py" "$ROOT/tests/test_errors.py" \
    "$ROOT/tests/test_hardening.py" -k "not million and not valgrind and not long_sequence" \
    > "$LOGS/cuda_suites.log" 2>&1
TESTS_RC=$?
grep -E "^(FAILED|ERROR)|passed|failed|error|^[0-9.]+s (call|setup)" "$LOGS/cuda_suites.log" \
    | tail -n 40
if stopped "$TESTS_RC"; then
    tail -c 600 "$LOGS/cuda_suites.log"; echo
    echo "(the suites ran past ${TESTS_LIMIT}s and were stopped; progress above)"
fi

# cold start: the untimed first run of each runner (kernel compilation, graph capture)
first_runs() {
    [ -s "$1" ] || { echo "(no bench JSON: no first-run times)"; return; }
    "$PY" - "$1" <<'PYEOF'
import json, sys
recs = json.load(open(sys.argv[1]))
recs = recs.get("records", recs) if isinstance(recs, dict) else recs
print("first (untimed) run, s:", ", ".join(
    f"{r['config']}/{r['backend']} {r['warmup_s']:.2f}" for r in recs if "warmup_s" in r))
PYEOF
}
BENCH_RC=0
for part in "S M L step:$BENCH_LIMIT:gpu_bench" "XL:$XL_LIMIT:gpu_bench_xl"; do
    IFS=: read -r CONFIGS LIMIT NAME <<< "$part"
    echo "=== fastsarnn bench with the GPU peers: $CONFIGS, limit ${LIMIT}s"
    ARGS=()
    for c in $CONFIGS; do ARGS+=(--config "$c"); done
    rm -f "$LOGS/$NAME.json"     # written at the bench's end: none if it was stopped
    timeout -k 10 "$LIMIT" "$PY" -m fastsarnn bench --backends "$PEERS" "${ARGS[@]}" \
        --repeat 3 --no-progress --json "$LOGS/$NAME.json" 2>&1 | tee "$LOGS/$NAME.log"
    RC=${PIPESTATUS[0]}
    stopped "$RC" && echo "(the bench ran past ${LIMIT}s and was stopped)"
    [ "$RC" = 0 ] || BENCH_RC=$RC
    first_runs "$LOGS/$NAME.json"
done

echo "=== a fresh process's first forward, compiled or from the disk cache, limit ${COLD_LIMIT}s"
timeout -k 10 "$COLD_LIMIT" "$PY" "$ROOT/benchmarks/cuda_cold_start.py" 2>&1 \
    | tee "$LOGS/cold_start.log"
COLD_RC=${PIPESTATUS[0]}
stopped "$COLD_RC" && echo "(the cold starts ran past ${COLD_LIMIT}s and were stopped)"

echo "=== one sequence over several blocks (CUDA_SPLIT_PARTS), limit ${SPLIT_LIMIT}s"
timeout -k 10 "$SPLIT_LIMIT" "$PY" "$ROOT/benchmarks/cuda_config_compare.py" --repeat 2 \
    --config S --config step --config M 2>&1 \
    | tee "$LOGS/split.log"
SPLIT_RC=${PIPESTATUS[0]}
stopped "$SPLIT_RC" && echo "(the comparison ran past ${SPLIT_LIMIT}s and was stopped)"

echo "=== where a token of model.step goes, limit ${PROFILE_LIMIT}s"
timeout -k 10 "$PROFILE_LIMIT" "$PY" "$ROOT/benchmarks/cuda_step_profile.py" 2>&1 \
    | tee "$LOGS/step_profile.log" | cut -c1-160
PROFILE_RC=${PIPESTATUS[0]}
stopped "$PROFILE_RC" && echo "(the profile ran past ${PROFILE_LIMIT}s and was stopped)"

echo "=== what the parts of a kernel step cost (model variants), limit ${PHASES_LIMIT}s"
timeout -k 10 "$PHASES_LIMIT" "$PY" "$ROOT/benchmarks/cuda_phase_costs.py" 2>&1 \
    | tee "$LOGS/phases.log"
PHASES_RC=${PIPESTATUS[0]}
stopped "$PHASES_RC" && echo "(the variants ran past ${PHASES_LIMIT}s and were stopped)"

SETTINGS_RC=0
# split on spaces and newlines (a setting per line is fine), never globbed
read -ra SETTINGS <<< "$(printf '%s' "${FASTSARNN_GPU_SETTINGS:-}" | tr '\n' ' ')"
for setting in "${SETTINGS[@]}"; do
    CONFIGS=S,M                           # unless configurations follow an @
    [[ $setting == *@?* ]] && CONFIGS=${setting#*@}
    setting=${setting%%@*}
    IFS=, read -ra SETTINGS_CONFIGS <<< "$CONFIGS"
    CONFIG_ARGS=()
    for c in "${SETTINGS_CONFIGS[@]}"; do CONFIG_ARGS+=(--config "$c"); done
    echo "=== $setting on ${SETTINGS_CONFIGS[*]}, limit ${SETTINGS_LIMIT}s"
    timeout -k 10 "$SETTINGS_LIMIT" "$PY" "$ROOT/benchmarks/cuda_config_compare.py" \
        --setting "$setting" --repeat 3 "${CONFIG_ARGS[@]}" 2>&1 \
        | tee -a "$LOGS/settings.log"
    RC=${PIPESTATUS[0]}
    stopped "$RC" && echo "(the comparison ran past ${SETTINGS_LIMIT}s and was stopped)"
    [ "$RC" = 0 ] || SETTINGS_RC=$RC
done

BASELINE_RC=0
if [ -f "$ROOT/.baseline/pyproject.toml" ]; then
    echo "=== baseline $(cat "$ROOT/.baseline/REVISION" 2>/dev/null || echo '(unknown revision)')" \
         "then this tree, S M step, limit ${BASELINE_LIMIT}s"
    OLD_SITE=$(mktemp -d)
    (cd "$ROOT/.baseline" && "$PY" -m pip install -q --no-index --no-deps \
        --no-build-isolation --no-compile --target "$OLD_SITE" .) > "$LOGS/baseline_install.log" 2>&1 \
        || { tail -5 "$LOGS/baseline_install.log"; BASELINE_RC=1; }
    # one process per tree (each imports its own fastsarnn), in turn, each within the
    # limit: this tree runs even where the baseline failed or was stopped
    TREES=("$SITE")
    [ "$BASELINE_RC" = 0 ] && TREES=("$OLD_SITE" "$SITE")   # else: it did not install
    for site in "${TREES[@]}"; do
        PYTHONPATH="$site${OTHER_PATHS:+:$OTHER_PATHS}" timeout -k 10 "$BASELINE_LIMIT" \
            "$PY" "$ROOT/benchmarks/cuda_config_compare.py" --setting CUDA_SPLIT_PARTS=auto \
            --repeat 3 --config S --config M --config step 2>&1 | tee -a "$LOGS/baseline.log"
        RC=${PIPESTATUS[0]}
        stopped "$RC" && echo "(the comparison ran past ${BASELINE_LIMIT}s and was stopped)"
        [ "$RC" = 0 ] || BASELINE_RC=$RC
    done
fi

echo "=== done in $(( $(date +%s) - START ))s: suites exit $TESTS_RC, bench exit $BENCH_RC," \
     "cold start exit $COLD_RC, split comparison exit $SPLIT_RC, step profile exit $PROFILE_RC," \
     "phase costs exit $PHASES_RC, settings exit $SETTINGS_RC, baseline comparison exit" \
     "$BASELINE_RC; logs in $LOGS"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ] && [ "$COLD_RC" = 0 ] && [ "$SPLIT_RC" = 0 ] \
    && [ "$PROFILE_RC" = 0 ] \
    && [ "$PHASES_RC" = 0 ] && [ "$SETTINGS_RC" = 0 ] && [ "$BASELINE_RC" = 0 ]
