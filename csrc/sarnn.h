/* fastsarnn C kernels: public API.
 *
 * This header is read verbatim by cffi's cdef, so it holds declarations only and no
 * preprocessor lines; the including C file provides <stdint.h> first.
 *
 * Arrays are C-contiguous, in the model dtype (float or double, by `dtype`):
 *   W_x (H, D), W_c (H, H), b (H), W_h (H, H), W_s (H, H), W_k (Ha, H), W_q (Ha, H), v (Ha)
 *   state: hist (batch, capacity, H), keys (batch, capacity, Ha), h (batch, H), c (batch, H),
 *          positions (batch) int64; position p lives in slot p % window (window > 0) or p.
 *   forward: x (batch, T, D), lengths (batch) int64, out_h / out_c (batch, T, H),
 *            out_attn (batch, T, attn_cols) or NULL; compact_attention = 0: column = absolute
 *            position; 1: column k = position max(0, p - window + 1) + k (attn_cols >= window).
 *   step:    x (batch, D), active (batch) uint8, out_h / out_c (batch, H).
 * Every entry point checks its arguments and returns 0 or an error code that
 * sarnn_error_message() explains; on error nothing has been written (state, outputs).
 */

/* Score and recurrence codes: the order of fastsarnn/_config.py SCORES / RECURRENCES
 * (tests/test_c_backend.py checks that they agree). */
enum sarnn_score {
    SARNN_SCORE_DOT = 0,
    SARNN_SCORE_SCALED_DOT = 1,
    SARNN_SCORE_GENERAL = 2,
    SARNN_SCORE_KQ = 3,
    SARNN_SCORE_ADDITIVE = 4,
    SARNN_NSCORES = 5
};

enum sarnn_recurrence {
    SARNN_RECURRENCE_C = 0,
    SARNN_RECURRENCE_HC = 1,
    SARNN_NRECURRENCES = 2
};

enum sarnn_dtype {
    SARNN_FLOAT32 = 0,
    SARNN_FLOAT64 = 1,
    SARNN_NDTYPES = 2
};

/* Kernel variants of the run-time dispatch; SARNN_ISA_AUTO picks the default for the CPU. */
enum sarnn_isa_code {
    SARNN_ISA_AUTO = -1,
    SARNN_ISA_GENERIC = 0,
    SARNN_ISA_AVX2 = 1,
    SARNN_ISA_AVX512 = 2,
    SARNN_NISAS = 3
};

/* How a single stream decides to split an eligible step (sarnn_set_split_choice). */
enum sarnn_split_choice {
    SARNN_SPLIT_MEASURE = -1,   /* the guard's measurements decide (the default) */
    SARNN_SPLIT_NEVER = 0,
    SARNN_SPLIT_ALWAYS = 1
};

typedef struct {
    int64_t D, H, Ha;    /* Ha: attention size for kq/additive, 0 for every other score */
    int32_t score;       /* enum sarnn_score */
    int32_t recurrence;  /* enum sarnn_recurrence */
    int32_t dtype;       /* enum sarnn_dtype */
    int64_t window;      /* 0: attend over the whole history */
    const void *W_x, *W_c, *b, *W_h, *W_s, *W_k, *W_q, *v;
} sarnn_model;

typedef struct {
    int64_t batch, capacity;
    void *hist, *keys, *h, *c;
    int64_t *positions;
} sarnn_state;

/* What the calling thread's last sarnn_forward / sarnn_step did with a single stream:
 * steps run, steps whose attended positions were offered to helper threads (split),
 * steps a helper contributed to (helped), chunks helpers computed, and the first step
 * (0-based, within the call) that the guard ran serially because the split did not pay
 * (a stalled helper, or serial measured faster; -1: none; probes of serial do not count). */
typedef struct {
    int64_t steps, steps_split, steps_helped, chunks_by_helpers, fallback_step;
} sarnn_call_stats;

int sarnn_forward(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
                  int64_t T, const int64_t *lengths, void *out_h, void *out_c, void *out_attn,
                  int64_t attn_cols, int32_t compact_attention, int32_t num_threads);

int sarnn_step(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
               const uint8_t *active, void *out_h, void *out_c, int32_t num_threads);

const char *sarnn_error_message(int code);

/* The variant that runs (enum sarnn_isa_code, never AUTO). */
int sarnn_isa(void);
/* Whether this CPU can run a variant. */
int sarnn_isa_supported(int isa);
/* Force a variant (or SARNN_ISA_AUTO); returns 0, or an error code (unknown variant, or
 * one this CPU cannot run) and changes nothing. */
int sarnn_set_isa(int isa);
int sarnn_sanitized(void);
int sarnn_max_threads(void);

/* Single-stream split: split a step when at least min_positions are attended, in chunks of
 * at least chunk_min positions. Guard: a wait for a helper longer than stall_ns ends the
 * split for the rest of the call; and the calling thread measures time per attended
 * position split and serial, runs the faster, and probes the other every probe_period steps
 * (or one-token calls). Values < 1 leave a setting unchanged; the calling thread's
 * measurements restart. */
int64_t sarnn_set_split_min(int64_t min_positions);
void sarnn_set_split_guard(int64_t chunk_min, int64_t stall_ns, int64_t probe_period);
/* enum sarnn_split_choice; returns 0 or an error code. The stall guard applies always. */
int sarnn_set_split_choice(int choice);
void sarnn_last_call_stats(sarnn_call_stats *out);

/* Test hooks: no-ops returning 0 unless built with -DSARNN_TESTING (sarnn_testing() says).
 * fail_alloc(n): the n-th kernel allocation from now fails (1: the next; 0: none).
 * stall_helper(step, ns): at that step of a split call (0-based; -1: none) the leader lets
 * a helper claim the first chunk, and the helper sleeps ns before computing it. hide_isa(isa, on): report a variant as
 * unsupported by the CPU. */
int sarnn_testing(void);
int sarnn_test_fail_alloc(int64_t n);
int sarnn_test_stall_helper(int64_t step, int64_t ns);
int sarnn_test_hide_isa(int isa, int on);
