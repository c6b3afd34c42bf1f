/* fastsarnn C kernels: argument checks, ISA dispatch and the OpenMP batch driver.
 *
 * Three levels: run_sequence (sarnn_kernel.h) is the serial kernel for one sequence;
 * seq_<isa>_<dtype> compiles it for one instruction set; drive_<dtype> runs sequences in
 * parallel over the batch (OpenMP, outside any multiversioned function), and a single
 * stream's attended positions over the team (split_one_<dtype>) when the batch is 1;
 * sarnn_forward and sarnn_step check every argument and dispatch.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "sarnn.h"

#define INLINE static inline __attribute__((always_inline))
#define SARNN_BLOCK 8

enum {
    SARNN_OK = 0,
    SARNN_ENULL = 1,
    SARNN_ESIZE = 2,
    SARNN_ECODE = 3,
    SARNN_EWEIGHT = 4,
    SARNN_EBATCH = 5,
    SARNN_ESTEPS = 6,
    SARNN_EDATA = 7,
    SARNN_ELENGTH = 8,
    SARNN_EPOSITION = 9,
    SARNN_ECAPACITY = 10,
    SARNN_EATTN = 11,
    SARNN_ENOMEM = 12,
    SARNN_EKEYS = 13,
    SARNN_NERR = 14
};

static const char *const error_messages[SARNN_NERR] = {
    "ok",
    "model or state pointer is NULL",
    "sizes must satisfy D >= 1, H >= 1, Ha >= 1 for kq/additive, window >= 0",
    "unknown score, recurrence or dtype code",
    "a weight that the score or recurrence needs is NULL",
    "batch must be >= 0 and equal to the state's batch",
    "T must be >= 0",
    "an input, output or state buffer is NULL",
    "lengths must lie in [0, T] (active rows count as length 1)",
    "a state position is negative or too large",
    "state capacity too small: it must equal window, or hold every new position",
    "attention output has too few columns for the positions written",
    "out of memory for kernel workspace",
    "keys buffer missing for score kq/additive",
};

const char *sarnn_error_message(int code)
{
    if (code < 0 || code >= SARNN_NERR)
        return "unknown error code";
    return error_messages[code];
}

/* ---- the kernel, once per dtype ------------------------------------------------------ */
#define REAL float
#define SFX(name) name##_f32
#define EXP expf
#define TANH tanhf
#define SQRT sqrtf
#include "sarnn_kernel.h"
#undef REAL
#undef SFX
#undef EXP
#undef TANH
#undef SQRT

#define REAL double
#define SFX(name) name##_f64
#define EXP exp
#define TANH tanh
#define SQRT sqrt
#include "sarnn_kernel.h"
#undef REAL
#undef SFX
#undef EXP
#undef TANH
#undef SQRT

/* ---- ISA variants: the same kernel compiled for AVX2+FMA and for baseline x86-64 ----- */
#define SEQ_ARGS(REAL_T)                                                                    \
    const sarnn_model *mdl, REAL_T *hist, REAL_T *keys, REAL_T *hs, REAL_T *cs,             \
        int64_t *pos_io, const REAL_T *x, int64_t len, REAL_T *out_h, REAL_T *out_c,        \
        REAL_T *attn, int64_t attn_cols, REAL_T *work
#define SEQ_CALL mdl, hist, keys, hs, cs, pos_io, x, len, out_h, out_c, attn, attn_cols, work

typedef void (*seq_f32_fn)(SEQ_ARGS(float));
typedef void (*seq_f64_fn)(SEQ_ARGS(double));

static void seq_generic_f32(SEQ_ARGS(float)) { run_sequence_f32(SEQ_CALL); }
static void seq_generic_f64(SEQ_ARGS(double)) { run_sequence_f64(SEQ_CALL); }

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_AVX2_VARIANT 1
__attribute__((target("avx2,fma"))) static void seq_avx2_f32(SEQ_ARGS(float))
{
    run_sequence_f32(SEQ_CALL);
}
__attribute__((target("avx2,fma"))) static void seq_avx2_f64(SEQ_ARGS(double))
{
    run_sequence_f64(SEQ_CALL);
}
#else
#define HAVE_AVX2_VARIANT 0
#define seq_avx2_f32 seq_generic_f32
#define seq_avx2_f64 seq_generic_f64
#endif

/* Phases of one step, per ISA, for the split driver (one stream over several threads). */
#define PHASE_DECLS(REAL_T, SUF)                                                            \
    typedef struct {                                                                        \
        void (*project)(const sarnn_model *, REAL_T *, const REAL_T *, int64_t);            \
        const REAL_T *(*update)(const sarnn_model *, REAL_T *, REAL_T *, REAL_T *,          \
                                const REAL_T *, int64_t, REAL_T *, REAL_T *);               \
        void (*attend)(const sarnn_model *, const REAL_T *, const REAL_T *, int64_t,        \
                       int64_t, const REAL_T *, REAL_T *, REAL_T *, REAL_T *, int *,        \
                       REAL_T *);                                                           \
    } phases_##SUF;
PHASE_DECLS(float, f32)
PHASE_DECLS(double, f64)

#define PHASE_WRAPPERS(REAL_T, SUF, ISA, ATTR)                                              \
    ATTR static void project_##ISA##_##SUF(const sarnn_model *m, REAL_T *out_h,             \
                                           const REAL_T *x, int64_t len)                    \
    {                                                                                       \
        project_##SUF(out_h, (const REAL_T *)m->W_x, (const REAL_T *)m->b, x, len, m->H,    \
                      m->D);                                                                \
    }                                                                                       \
    ATTR static const REAL_T *update_##ISA##_##SUF(const sarnn_model *m, REAL_T *hist,      \
                                                   REAL_T *keys, REAL_T *hs,                \
                                                   const REAL_T *cs, int64_t p,             \
                                                   REAL_T *h_t, REAL_T *q)                  \
    {                                                                                       \
        return step_update_##SUF(m, hist, keys, hs, cs, p, h_t, q);                         \
    }                                                                                       \
    ATTR static void attend_##ISA##_##SUF(const sarnn_model *m, const REAL_T *hist,         \
                                          const REAL_T *keys, int64_t lo, int64_t hi,       \
                                          const REAL_T *qv, REAL_T *acc, REAL_T *mx,        \
                                          REAL_T *l, int *started, REAL_T *e_out)           \
    {                                                                                       \
        attend_positions_##SUF(m, hist, keys, lo, hi, qv, acc, mx, l, started, e_out);      \
    }                                                                                       \
    __attribute__((unused)) static const phases_##SUF phases_##ISA##_##SUF = {              \
        project_##ISA##_##SUF, update_##ISA##_##SUF, attend_##ISA##_##SUF};

PHASE_WRAPPERS(float, f32, generic, )
PHASE_WRAPPERS(double, f64, generic, )
#if HAVE_AVX2_VARIANT
PHASE_WRAPPERS(float, f32, avx2, __attribute__((target("avx2,fma"))))
PHASE_WRAPPERS(double, f64, avx2, __attribute__((target("avx2,fma"))))
#else
#define phases_avx2_f32 phases_generic_f32
#define phases_avx2_f64 phases_generic_f64
#endif

/* A single stream splits each step's attended positions over threads when at least this
 * many are attended (below it, the barriers cost more than the split saves). */
static int64_t split_min_positions = 256;

int64_t sarnn_set_split_min(int64_t n)
{
    int64_t old = split_min_positions;
    if (n >= 1)
        split_min_positions = n;
    return old;
}

static int isa_forced_generic = 0;

/* 1 when the AVX2+FMA kernels run, 0 for the generic ones. */
int sarnn_isa(void)
{
#if HAVE_AVX2_VARIANT
    if (isa_forced_generic)
        return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int sarnn_force_generic(int on)
{
    isa_forced_generic = on != 0;
    return sarnn_isa();
}

int sarnn_sanitized(void)
{
#ifdef SARNN_SANITIZED
    return 1;
#else
    return 0;
#endif
}

int sarnn_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Steps row b runs: its length (forward), or 1 / 0 for an active / inactive row (step). */
static inline int64_t row_len(const int64_t *lengths, const uint8_t *active, int64_t b)
{
    return lengths ? lengths[b] : (active[b] ? 1 : 0);
}

/* ---- argument checks ----------------------------------------------------------------- */
static int check_model(const sarnn_model *m)
{
    if (!m)
        return SARNN_ENULL;
    if (m->score < 0 || m->score > 4 || m->recurrence < 0 || m->recurrence > 1 ||
        m->dtype < 0 || m->dtype > 1)
        return SARNN_ECODE;
    if (m->D < 1 || m->H < 1 || m->window < 0 || (m->score >= 3 && m->Ha < 1))
        return SARNN_ESIZE;
    if (!m->W_x || !m->W_c || !m->b || (m->recurrence == 1 && !m->W_h) ||
        (m->score == 2 && !m->W_s) || (m->score >= 3 && (!m->W_k || !m->W_q)) ||
        (m->score == 4 && !m->v))
        return SARNN_EWEIGHT;
    return SARNN_OK;
}

/* lengths (or active flags when lengths is NULL) against T, positions and capacity. */
static int check_call(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
                      int64_t T, const int64_t *lengths, const uint8_t *active,
                      const void *out_h, const void *out_c, const void *attn,
                      int64_t attn_cols)
{
    int rc = check_model(m);
    if (rc)
        return rc;
    if (!s)
        return SARNN_ENULL;
    if (batch < 0 || s->batch != batch)
        return SARNN_EBATCH;
    if (T < 0)
        return SARNN_ESTEPS;
    if (batch == 0 || T == 0)
        return SARNN_OK;
    if (!x || !out_h || !out_c || (!lengths && !active) || !s->hist || !s->h || !s->c ||
        !s->positions)
        return SARNN_EDATA;
    if (m->score >= 3 && !s->keys)
        return SARNN_EKEYS;
    if (s->capacity < 1 || (m->window && s->capacity != m->window))
        return SARNN_ECAPACITY;
    for (int64_t b = 0; b < batch; b++) {
        int64_t len = row_len(lengths, active, b);
        int64_t pos = s->positions[b];
        if (len < 0 || len > T)
            return SARNN_ELENGTH;
        if (pos < 0 || pos > INT64_MAX / 4)
            return SARNN_EPOSITION;
        if (!m->window && pos + len > s->capacity)
            return SARNN_ECAPACITY;
        if (attn && pos + len > attn_cols)
            return SARNN_EATTN;
    }
    return SARNN_OK;
}

/* ---- the batch driver ---------------------------------------------------------------- */
/* One stream (batch 1) on nt threads: thread 0 runs the update of each step, every thread
 * folds a contiguous share of the attended positions into its own online softmax, thread 0
 * merges them (finish_step). Two barriers per step; the team lives for the whole call. */
#define DEFINE_SPLIT(REAL_T, SUF)                                                           \
    static int split_one_##SUF(const sarnn_model *m, const sarnn_state *s, const REAL_T *x,  \
                               int64_t len, REAL_T *out_h, REAL_T *out_c, REAL_T *attn,     \
                               int64_t attn_cols, int nt)                                   \
    {                                                                                       \
        const phases_##SUF *ph = sarnn_isa() ? &phases_avx2_##SUF : &phases_generic_##SUF;  \
        const int64_t H = m->H, W = m->window, pos0 = s->positions[0];                      \
        const int64_t qn = m->Ha > H ? m->Ha : H;                                           \
        REAL_T *hist = (REAL_T *)s->hist, *keys = (REAL_T *)s->keys;                        \
        REAL_T *hs = (REAL_T *)s->h, *cs = (REAL_T *)s->c;                                  \
        REAL_T *q = 0, *acc = 0, *mx = 0, *l = 0;                                           \
        int *started = 0;                                                                   \
        const REAL_T *qv = 0;                                                               \
        size_t bytes = ((size_t)(qn + (int64_t)nt * H + 2 * nt) * sizeof(REAL_T) + 63) / 64 \
                       * 64;                                                                \
        if (posix_memalign((void **)&q, 64, bytes) != 0)                                    \
            return SARNN_ENOMEM;                                                            \
        started = (int *)calloc((size_t)nt, sizeof(int));                                   \
        if (!started) {                                                                     \
            free(q);                                                                        \
            return SARNN_ENOMEM;                                                            \
        }                                                                                   \
        acc = q + qn;                                                                       \
        mx = acc + (int64_t)nt * H;                                                         \
        l = mx + nt;                                                                        \
        ph->project(m, out_h, x, len);                                                      \
        _Pragma("omp parallel num_threads(nt)")                                             \
        {                                                                                   \
            const int tid = omp_get_thread_num(), P = omp_get_num_threads();                \
            for (int64_t r = 0; r < len; r++) {                                             \
                const int64_t p = pos0 + r;                                                 \
                if (tid == 0)                                                               \
                    qv = ph->update(m, hist, keys, hs, cs, p, out_h + r * H, q);            \
                _Pragma("omp barrier")                                                      \
                const int64_t first = (W && p - W + 1 > 0) ? p - W + 1 : 0;                 \
                const int64_t n = p - first + 1;                                            \
                const int parts = n >= split_min_positions ? P : 1;                         \
                REAL_T *e_row = attn ? attn + r * attn_cols + first : 0;                    \
                started[tid] = 0;                                                           \
                if (tid < parts) {                                                          \
                    const int64_t lo = first + n * tid / parts;                             \
                    const int64_t hi = first + n * (tid + 1) / parts - 1;                   \
                    REAL_T *a = acc + (int64_t)tid * H;                                     \
                    for (int64_t k = 0; k < H; k++)                                         \
                        a[k] = 0;                                                           \
                    ph->attend(m, hist, keys, lo, hi, qv, a, &mx[tid], &l[tid],             \
                               &started[tid], e_row ? e_row + (lo - first) : 0);            \
                }                                                                           \
                _Pragma("omp barrier")                                                      \
                if (tid == 0)                                                               \
                    finish_step_##SUF(H, parts, acc, mx, l, started, out_c + r * H, cs,     \
                                      e_row, n);                                            \
            }                                                                               \
        }                                                                                   \
        s->positions[0] = pos0 + len;                                                       \
        free(started);                                                                      \
        free(q);                                                                            \
        return SARNN_OK;                                                                    \
    }
#ifdef _OPENMP
DEFINE_SPLIT(float, f32)
DEFINE_SPLIT(double, f64)
#define SPLIT_AVAILABLE 1
#else
#define SPLIT_AVAILABLE 0
#define split_one_f32(...) SARNN_OK
#define split_one_f64(...) SARNN_OK
#endif

/* Row b of the batch through the serial kernel (inside DEFINE_DRIVER's scope). */
#define RUN_ROW(b)                                                                          \
    do {                                                                                    \
        const int64_t len_ = row_len(lengths, active, (b));                                 \
        if (len_ > 0)                                                                       \
            seq(m, hist + (b) * cap * H, keys ? keys + (b) * cap * Ha : 0, hs + (b) * H,    \
                cs + (b) * H, &s->positions[(b)], x + (b) * T * D, len_,                    \
                out_h + (b) * T * H, out_c + (b) * T * H,                                   \
                attn ? attn + (b) * T * attn_cols : 0, attn_cols, work);                    \
    } while (0)

#define DEFINE_DRIVER(REAL_T, SUF)                                                          \
    static int drive_##SUF(const sarnn_model *m, const sarnn_state *s, const REAL_T *x,     \
                           int64_t batch, int64_t T, const int64_t *lengths,                \
                           const uint8_t *active, REAL_T *out_h, REAL_T *out_c,             \
                           REAL_T *attn, int64_t attn_cols, int32_t num_threads)            \
    {                                                                                       \
        const int64_t H = m->H, D = m->D, Ha = m->score >= 3 ? m->Ha : 0;                   \
        const int64_t cap = s->capacity;                                                    \
        const size_t work_n = (size_t)((Ha > H ? Ha : H) + H);                             \
        const size_t work_bytes = ((work_n * sizeof(REAL_T) + 63) / 64) * 64;              \
        seq_##SUF##_fn seq = sarnn_isa() ? seq_avx2_##SUF : seq_generic_##SUF;              \
        REAL_T *hist = (REAL_T *)s->hist, *keys = (REAL_T *)s->keys;                        \
        REAL_T *hs = (REAL_T *)s->h, *cs = (REAL_T *)s->c;                                  \
        int nt = num_threads > 0 ? num_threads : sarnn_max_threads();                      \
        int err = SARNN_OK;                                                                 \
        if (SPLIT_AVAILABLE && batch == 1 && nt > 1) {                                      \
            int64_t len0 = row_len(lengths, active, 0);                                     \
            int64_t most = s->positions[0] + len0; /* most positions a step attends */      \
            if (m->window && m->window < most)                                              \
                most = m->window;                                                           \
            if (len0 > 0 && most >= split_min_positions)                                    \
                return split_one_##SUF(m, s, x, len0, out_h, out_c, attn, attn_cols, nt);   \
        }                                                                                   \
        if (nt > batch)                                                                     \
            nt = (int)batch;                                                                \
        if (nt < 1)                                                                         \
            nt = 1;                                                                         \
        if (nt == 1) { /* one sequence or one thread: no parallel region at all */          \
            REAL_T *work = 0;                                                               \
            if (posix_memalign((void **)&work, 64, work_bytes) != 0)                        \
                return SARNN_ENOMEM;                                                        \
            for (int64_t b = 0; b < batch; b++)                                             \
                RUN_ROW(b);                                                                 \
            free(work);                                                                     \
            return SARNN_OK;                                                                \
        }                                                                                   \
        _Pragma("omp parallel num_threads(nt)")                                             \
        {                                                                                   \
            REAL_T *work = 0;                                                               \
            if (posix_memalign((void **)&work, 64, work_bytes) != 0) {                      \
                _Pragma("omp atomic write") err = SARNN_ENOMEM;                             \
                work = 0;                                                                   \
            }                                                                               \
            _Pragma("omp for schedule(dynamic, 1)")                                         \
            for (int64_t b = 0; b < batch; b++)                                             \
                if (work)                                                                   \
                    RUN_ROW(b);                                                             \
            free(work);                                                                     \
        }                                                                                   \
        return err;                                                                         \
    }
DEFINE_DRIVER(float, f32)
DEFINE_DRIVER(double, f64)

/* ---- public entry points ------------------------------------------------------------- */
int sarnn_forward(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
                  int64_t T, const int64_t *lengths, void *out_h, void *out_c, void *out_attn,
                  int64_t attn_cols, int32_t num_threads)
{
    int rc = check_call(m, s, x, batch, T, lengths, 0, out_h, out_c, out_attn, attn_cols);
    if (!rc && !lengths && batch > 0 && T > 0)
        rc = SARNN_EDATA;
    if (rc || batch == 0 || T == 0)
        return rc;
    if (m->dtype == 0)
        return drive_f32(m, s, (const float *)x, batch, T, lengths, 0, (float *)out_h,
                         (float *)out_c, (float *)out_attn, attn_cols, num_threads);
    return drive_f64(m, s, (const double *)x, batch, T, lengths, 0, (double *)out_h,
                     (double *)out_c, (double *)out_attn, attn_cols, num_threads);
}

int sarnn_step(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
               const uint8_t *active, void *out_h, void *out_c, int32_t num_threads)
{
    int rc = check_call(m, s, x, batch, 1, 0, active, out_h, out_c, 0, 0);
    if (!rc && !active && batch > 0)
        rc = SARNN_EDATA;
    if (rc || batch == 0)
        return rc;
    if (m->dtype == 0)
        return drive_f32(m, s, (const float *)x, batch, 1, 0, active, (float *)out_h,
                         (float *)out_c, 0, 0, num_threads);
    return drive_f64(m, s, (const double *)x, batch, 1, 0, active, (double *)out_h,
                     (double *)out_c, 0, 0, num_threads);
}
