#!/usr/bin/env bash
# One-command GPU check of the "cuda" backend (issue 13), on a machine with an NVIDIA GPU.
# Its parts, in the order they run by default (FASTSARNN_GPU_PARTS names some of them, in
# the order given):
#   suites    the CUDA parity, API, error and hardening suites at the production block size
#             (FASTSARNN_TEST_CUDA_BLOCK = fastsarnn._config.CUDA_BLOCK_SIZE, unless
#             FASTSARNN_GPU_BLOCK says otherwise), with their slowest tests;
#   bench     fastsarnn bench with the GPU peers: --backends cuda,cuda-device,torch-cuda,
#             torch-cuda-graph,c (c left out where the C backend was not built) on S, M, L,
#             step, with the runners' untimed first run (compilation, graph capture);
#   xl        the same on XL (its float64 NumPy reference alone takes about a minute);
#   packed    the parity, equation and hardening suites again on the packed kernel
#             (FASTSARNN_TEST_CUDA_SEQUENCES_PER_BLOCK = FASTSARNN_GPU_SEQUENCES_PER_BLOCK,
#             default 8: the most that do not spill at H = 256), at the same block size;
#   phases    benchmarks/cuda_phase_costs.py: what a kernel step's fixed part, its
#             attention, one more matrix-vector product and a token of step cost;
#   settings  each setting named in FASTSARNN_GPU_SETTINGS (space- or newline-separated
#             NAME=V1,V2,..., for example "CUDA_MATVEC_WORDS=8,16,32 CUDA_ROWS_PER_WARP=4,8";
#             none by default) compared on S and M, or on the configurations named after
#             an @ (CUDA_MIN_BLOCKS_PER_SM=1,2@XL), by benchmarks/cuda_config_compare.py
#             on device arrays (the kernels' time without the bus; step on NumPy x_t),
#             except settings of the staged copies (CUDA_STAGING_*), on NumPy arrays;
#   cold      benchmarks/cuda_cold_start.py: a fresh process's first forward (S) with
#             Numba's on-disk kernel cache off, on and empty, on and filled;
#   baseline  where .baseline/ holds another revision's source tree (`bash
#             benchmarks/gpu_check.sh baseline REV` makes it, where git is), that revision
#             and this one timed in turn on S, M and step (each checked against the float64
#             reference first): a before/after on one GPU, in one call;
#   split     benchmarks/cuda_config_compare.py: S, step, M with a sequence split over 1,
#             2, 4, 8, 16 blocks and "auto";
#   profile   benchmarks/cuda_step_profile.py: where a token of model.step spends its time.
# It prints the suites' summary lines and the bench tables, installs nothing from the
# network, and gives each part its own time limit within one limit for all of them
# (FASTSARNN_GPU_TOTAL_S, 300 s: the issue's five minutes; 540 s still fits a call of
# 600 s): a part that would start with less than FASTSARNN_GPU_MIN_PART_S (15 s) left is
# skipped, and the last line names the parts that ran, their exit codes, and those
# skipped for time. Exit 0 where every part that ran passed.
#
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh          # on the GPU machine (python3 must have numba,
#                                         # numba-cuda, numpy, torch, pytest, hypothesis)
#   bash benchmarks/gpu_check.sh fetch    # on a machine with pip access: put the wheels
#                                         # the GPU machine lacks (cffi, for the C backend)
#                                         # into .whl/, to carry along
#   bash benchmarks/gpu_check.sh baseline REV   # where git is: REV's tree into .baseline/
#                                               # (git-ignored), to carry along
# Environment: PYTHON (default python3); OUT (if set, the bench JSON and logs go there);
# FASTSARNN_GPU_PARTS (the parts above, space-separated, in the order to run them);
# FASTSARNN_GPU_BLOCK (the suites' block size, default _config.CUDA_BLOCK_SIZE);
# FASTSARNN_GPU_WORKERS (pytest-xdist processes for the suites where xdist is installed,
# default 12; kernels compile per process, so tests run side by side);
# FASTSARNN_GPU_SETTINGS (part settings); FASTSARNN_GPU_TOTAL_S, _MIN_PART_S (above);
# FASTSARNN_GPU_BASELINE_DIR (part baseline's tree, default .baseline);
# FASTSARNN_GPU_SEQUENCES_PER_BLOCK (part packed, default 8);
# FASTSARNN_GPU_TESTS_S, _PACKED_S, _BENCH_S, _XL_S, _PHASES_S, _SETTINGS_S (each setting),
# _COLD_S, _BASELINE_S (each tree), _SPLIT_S, _PROFILE_S (each part's own limit, seconds).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TESTS_LIMIT=${FASTSARNN_GPU_TESTS_S:-120}
PACKED_LIMIT=${FASTSARNN_GPU_PACKED_S:-60}
PER_BLOCK=${FASTSARNN_GPU_SEQUENCES_PER_BLOCK:-8}
BENCH_LIMIT=${FASTSARNN_GPU_BENCH_S:-90}
XL_LIMIT=${FASTSARNN_GPU_XL_S:-120}
SPLIT_LIMIT=${FASTSARNN_GPU_SPLIT_S:-40}
PROFILE_LIMIT=${FASTSARNN_GPU_PROFILE_S:-30}
PHASES_LIMIT=${FASTSARNN_GPU_PHASES_S:-90}
BASELINE_LIMIT=${FASTSARNN_GPU_BASELINE_S:-90}
SETTINGS_LIMIT=${FASTSARNN_GPU_SETTINGS_S:-60}
COLD_LIMIT=${FASTSARNN_GPU_COLD_S:-90}
TOTAL_LIMIT=${FASTSARNN_GPU_TOTAL_S:-300}   # all parts together, from the start
MIN_PART=${FASTSARNN_GPU_MIN_PART_S:-15}    # a part with less left is skipped
BASELINE=$(realpath -m -- "${FASTSARNN_GPU_BASELINE_DIR:-$ROOT/.baseline}")  # before any cd

if [ "${1:-}" = "fetch" ]; then   # wheels for CPython 3.12 on x86-64 Linux
    cd "$ROOT"
    EXCLUDE=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl cffi==2.0.0 pycparser==2.23
fi

if [ "${1:-}" = "baseline" ]; then   # another revision's source tree, for the baseline part
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
# Parts to run, in this order (FASTSARNN_GPU_PARTS, space-separated), the most telling
# first: a lent GPU's minutes are few, and every part after the suites is optional.
ALL_PARTS="suites bench xl packed phases settings cold baseline split profile"
PARTS=${FASTSARNN_GPU_PARTS:-$ALL_PARTS}
for part in $PARTS; do
    [[ " $ALL_PARTS " == *" $part "* ]] \
        || { echo "unknown part '$part' in FASTSARNN_GPU_PARTS; expected some of: $ALL_PARTS"; exit 2; }
done
# every limit a whole number of seconds, at least 1 (`timeout 0` would mean no limit)
for limit in TOTAL_LIMIT MIN_PART TESTS_LIMIT PACKED_LIMIT BENCH_LIMIT XL_LIMIT SPLIT_LIMIT PROFILE_LIMIT \
             PHASES_LIMIT BASELINE_LIMIT SETTINGS_LIMIT COLD_LIMIT; do
    [[ ${!limit} =~ ^[0-9]+$ && ${!limit} -ge 1 ]] \
        || { echo "each FASTSARNN_GPU_*_S limit takes whole seconds, at least 1; got" \
                  "'${!limit}' for $limit"; exit 2; }
done
[[ $PER_BLOCK =~ ^[0-9]+$ && $PER_BLOCK -ge 2 && $PER_BLOCK -le 32 ]] \
    || { echo "FASTSARNN_GPU_SEQUENCES_PER_BLOCK takes an integer in [2, 32]; got" \
              "'$PER_BLOCK'"; exit 2; }
stopped() { [ "$1" = 124 ] || [ "$1" = 137 ]; }   # timeout's codes: TERM, then KILL
# finished PART RC WHAT: a run of PART exited RC; say so where WHAT ran past its limit, and
# keep PART's exit: 0 where every run of it so far exited 0, else the latest failure
finished() {
    stopped "$2" && echo "(stopped: $3 ran past ${LIMIT}s)"
    if [ "$2" != 0 ] || [ -z "${RCS[$1]:-}" ]; then RCS[$1]=$2; fi
}
SKIPPED=()
# within NAME LIMIT: set LIMIT to the part's own limit or what is left of the total
# (FASTSARNN_GPU_TOTAL_S, counted from the start), whichever is less; where less than
# FASTSARNN_GPU_MIN_PART_S is left, say so, record NAME as skipped and return 1.
within() {
    local left=$(( START + TOTAL_LIMIT - $(date +%s) ))
    if [ "$left" -lt "$MIN_PART" ]; then
        echo "=== $1 skipped: ${left}s left of the ${TOTAL_LIMIT}s in all"
        SKIPPED+=("$1")
        return 1
    fi
    LIMIT=$(( $2 < left ? $2 : left ))
}
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
PEERS=cuda,cuda-device,torch-cuda,torch-cuda-graph
if grep -qE '^ +c +available' "$LOGS/info.log"; then
    PEERS=$PEERS,c
else
    echo "(the C backend is unavailable here: the bench runs without it)"
fi

# pytest_part PART OWN_LIMIT LOG TITLE PER_BLOCK FILE...: CUDA test files at block size
# $BLOCK, PER_BLOCK sequences per block (1: a block per sequence), their summary printed
pytest_part() {
    local part=$1 own=$2 log=$3 title=$4 per_block=$5 files=() f; shift 5
    within "$part" "$own" || return 0
    echo "=== $title at block size $BLOCK (production: $PROD threads), limit ${LIMIT}s"
    for f in "$@"; do files+=("$ROOT/tests/$f"); done
    FASTSARNN_TEST_BACKENDS=cuda FASTSARNN_REQUIRE_BACKENDS=cuda FASTSARNN_TEST_CUDA_BLOCK=$BLOCK \
        FASTSARNN_TEST_CUDA_SEQUENCES_PER_BLOCK=$per_block \
        timeout -k 10 "$LIMIT" "$PY" -m pytest -v -p no:cacheprovider --rootdir "$ROOT" \
        "${PARALLEL[@]}" --durations=8 -c "$ROOT/pyproject.toml" "${files[@]}" \
        -k "not million and not valgrind and not long_sequence and not installed_one" \
        > "$LOGS/$log" 2>&1
    local rc=$?
    # -v names each test as it ends (with xdist: "[gw3] [ 29%] FAILED tests/..."), so a run
    # stopped at its limit, before pytest's summary, still names its failures
    grep -E " (FAILED|ERROR) |^(FAILED|ERROR) |^=+ .*(passed|failed|error)|^[0-9.]+s (call|setup)" \
        "$LOGS/$log" | tail -n 60
    stopped "$rc" && { tail -c 600 "$LOGS/$log"; echo; }   # its progress
    finished "$part" "$rc" "the suites"
}
part_suites() {
    pytest_part suites "$TESTS_LIMIT" cuda_suites.log "CUDA suites" 1 test_cuda.py \
        test_parity.py test_equations.py test_errors.py test_hardening.py test_api.py
}
part_packed() {
    pytest_part packed "$PACKED_LIMIT" cuda_packed.log \
        "CUDA parity suites on the packed kernel, $PER_BLOCK sequences per block" \
        "$PER_BLOCK" test_parity.py test_equations.py test_hardening.py
}

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

# bench_part PART OWN_LIMIT LOGNAME CONFIG...: fastsarnn bench with the GPU peers
bench_part() {
    local part=$1 own=$2 name=$3 c args=(); shift 3
    within "$part" "$own" || return 0
    echo "=== fastsarnn bench with the GPU peers: $*, limit ${LIMIT}s"
    for c in "$@"; do args+=(--config "$c"); done
    rm -f "$LOGS/$name.json"     # written at the bench's end: none if it was stopped
    timeout -k 10 "$LIMIT" "$PY" -m fastsarnn bench --backends "$PEERS" "${args[@]}" \
        --repeat 3 --no-progress --json "$LOGS/$name.json" 2>&1 | tee "$LOGS/$name.log"
    finished "$part" "${PIPESTATUS[0]}" "the bench"
    first_runs "$LOGS/$name.json"
}
part_bench() { bench_part bench "$BENCH_LIMIT" gpu_bench S M L step; }
part_xl() { bench_part xl "$XL_LIMIT" gpu_bench_xl XL; }

# script_part NAME OWN_LIMIT TITLE LOG WIDTH SCRIPT [ARGS...]: one benchmarks/ script, its
# output logged and printed (lines cut to WIDTH columns, 0: whole)
script_part() {
    local name=$1 own=$2 title=$3 log=$4 width=$5; shift 5
    within "$name" "$own" || return 0
    echo "=== $title, limit ${LIMIT}s"
    local cut=(cat)
    [ "$width" -gt 0 ] && cut=(cut -c "1-$width")
    timeout -k 10 "$LIMIT" "$PY" "$ROOT/benchmarks/$@" 2>&1 | tee "$LOGS/$log" | "${cut[@]}"
    finished "$name" "${PIPESTATUS[0]}" "it"
}
part_cold() {
    script_part cold "$COLD_LIMIT" \
        "a fresh process's first forward, compiled or from the disk cache" \
        cold_start.log 0 cuda_cold_start.py
}
part_split() {
    script_part split "$SPLIT_LIMIT" "one sequence over several blocks (CUDA_SPLIT_PARTS)" \
        split.log 0 cuda_config_compare.py --repeat 2 --config S --config step --config M
}
part_profile() {
    script_part profile "$PROFILE_LIMIT" "where a token of model.step goes" \
        step_profile.log 160 cuda_step_profile.py
}
part_phases() {
    script_part phases "$PHASES_LIMIT" \
        "what the parts of a kernel step cost (model variants)" phases.log 0 \
        cuda_phase_costs.py
}

part_settings() {
    local setting configs c
    # split on spaces and newlines (a setting per line is fine), never globbed
    local settings=()
    read -ra settings <<< "$(printf '%s' "${FASTSARNN_GPU_SETTINGS:-}" | tr '\n' ' ')"
    for setting in "${settings[@]}"; do
        configs=S,M                           # unless configurations follow an @
        [[ $setting == *@?* ]] && configs=${setting#*@}
        setting=${setting%%@*}
        within "settings $setting" "$SETTINGS_LIMIT" || continue
        local config_names=() config_args=() arrays=(--device-arrays)
        IFS=, read -ra config_names <<< "$configs"
        for c in "${config_names[@]}"; do config_args+=(--config "$c"); done
        # the staged copies move NumPy arrays: device arrays would never use them
        [[ $setting == *CUDA_STAGING_* ]] && arrays=()
        echo "=== $setting on ${config_names[*]} (${arrays[*]:-NumPy arrays}), limit ${LIMIT}s"
        timeout -k 10 "$LIMIT" "$PY" "$ROOT/benchmarks/cuda_config_compare.py" \
            --setting "$setting" --repeat 3 "${arrays[@]}" "${config_args[@]}" 2>&1 \
            | tee -a "$LOGS/settings.log"
        finished settings "${PIPESTATUS[0]}" "the comparison"
    done
}

part_baseline() {
    [ -f "$BASELINE/pyproject.toml" ] || return 0
    within baseline "$BASELINE_LIMIT" || return 0
    local rev old_site site
    rev=$(cat "$BASELINE/REVISION" 2>/dev/null || echo '(unknown revision)')
    echo "=== baseline $rev then this tree, S M step, limit ${LIMIT}s each"
    old_site=$(mktemp -d)
    (cd "$BASELINE" && "$PY" -m pip install -q --no-index --no-deps \
        --no-build-isolation --no-compile --target "$old_site" .) > "$LOGS/baseline_install.log" 2>&1 \
        || { tail -5 "$LOGS/baseline_install.log"; finished baseline 1 "its install"; }
    # one process per tree (each imports its own fastsarnn), in turn, each within the
    # limit: this tree runs even where the baseline failed or was stopped
    local trees=("$SITE")
    [ -z "${RCS[baseline]:-}" ] && trees=("$old_site" "$SITE")   # else: it did not install
    for site in "${trees[@]}"; do
        within "baseline ($([ "$site" = "$SITE" ] && echo "this tree" || echo "$rev"))" \
            "$BASELINE_LIMIT" || break
        PYTHONPATH="$site${OTHER_PATHS:+:$OTHER_PATHS}" timeout -k 10 "$LIMIT" \
            "$PY" "$ROOT/benchmarks/cuda_config_compare.py" --setting CUDA_SPLIT_PARTS=auto \
            --repeat 3 --config S --config M --config step 2>&1 | tee -a "$LOGS/baseline.log"
        finished baseline "${PIPESTATUS[0]}" "the comparison"
    done
}

declare -A RCS=()
for part in $PARTS; do
    "part_$part"
done

SUMMARY=() FAILED=0
for part in $PARTS; do
    [ -n "${RCS[$part]:-}" ] || continue
    SUMMARY+=("$part exit ${RCS[$part]}")
    [ "${RCS[$part]}" = 0 ] || FAILED=1
done
echo "=== done in $(( $(date +%s) - START ))s of ${TOTAL_LIMIT}s: $(IFS=,; echo "${SUMMARY[*]:-no part ran}" | sed 's/,/, /g');" \
     "skipped for time: ${SKIPPED[*]:-none}; logs in $LOGS"
exit "$FAILED"
