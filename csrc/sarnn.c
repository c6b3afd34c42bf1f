/* fastsarnn C kernels: argument checks, ISA dispatch, and the public entry points.
 *
 * Three templates, instantiated here: sarnn_kernel.h (the math of one step, per dtype),
 * sarnn_phases.h (its phases compiled for one instruction set: generic x86-64, AVX2+FMA,
 * AVX-512; per dtype and ISA) and sarnn_driver.h (the one step loop, the single-stream
 * split over a persistent helper pool and the OpenMP batch driver; per dtype).
 * sarnn_forward and sarnn_step check every argument, then dispatch.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
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
    SARNN_EISA = 14,
    SARNN_ECOMPACT = 15,
    SARNN_NERR = 16
};

static const char *const error_messages[SARNN_NERR] = {
    "ok",
    "model or state pointer is NULL",
    "sizes must satisfy D >= 1, H >= 1, window >= 0, and Ha >= 1 for kq/additive, "
    "Ha == 0 for every other score",
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
    "unknown kernel variant, or one this CPU cannot run",
    "compact attention needs a window and attn_cols >= window",
};

const char *sarnn_error_message(int code)
{
    if (code < 0 || code >= SARNN_NERR)
        return "unknown error code";
    return error_messages[code];
}


/* ---- model codes --------------------------------------------------------------------- */
static inline int score_is_keyed(enum sarnn_score score)
{
    return score == SARNN_SCORE_KQ || score == SARNN_SCORE_ADDITIVE;
}

/* Width of a cached key (0: no keys), and of the query vector the scores dot with. */
static inline int64_t key_dim(const sarnn_model *m)
{
    return score_is_keyed((enum sarnn_score)m->score) ? m->Ha : 0;
}

static inline int64_t query_dim(const sarnn_model *m)
{
    return key_dim(m) > m->H ? key_dim(m) : m->H;
}

/* ---- the kernel, once per dtype; its phases once per dtype and instruction set ------- */
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86_VARIANTS 1
#define ATTR_AVX2 __attribute__((target("avx2,fma")))
#define ATTR_AVX512                                                                         \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
#else
#define HAVE_X86_VARIANTS 0
#endif

#define REAL float
#define SFX(name) name##_f32
#define EXP expf
#define TANH tanhf
#define SQRT sqrtf
#include "sarnn_kernel.h"
#define ISA_ATTR
#define ISA_SFX(name) name##_generic_f32
#include "sarnn_phases.h"
#undef ISA_ATTR
#undef ISA_SFX
#if HAVE_X86_VARIANTS
#define ISA_ATTR ATTR_AVX2
#define ISA_SFX(name) name##_avx2_f32
#include "sarnn_phases.h"
#undef ISA_ATTR
#undef ISA_SFX
#define ISA_ATTR ATTR_AVX512
#define ISA_SFX(name) name##_avx512_f32
#include "sarnn_phases.h"
#undef ISA_ATTR
#undef ISA_SFX
#else
#define phases_avx2_f32 phases_generic_f32
#define phases_avx512_f32 phases_generic_f32
#endif
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
#define ISA_ATTR
#define ISA_SFX(name) name##_generic_f64
#include "sarnn_phases.h"
#undef ISA_ATTR
#undef ISA_SFX
#if HAVE_X86_VARIANTS
#define ISA_ATTR ATTR_AVX2
#define ISA_SFX(name) name##_avx2_f64
#include "sarnn_phases.h"
#undef ISA_ATTR
#undef ISA_SFX
#define ISA_ATTR ATTR_AVX512
#define ISA_SFX(name) name##_avx512_f64
#include "sarnn_phases.h"
#undef ISA_ATTR
#undef ISA_SFX
#else
#define phases_avx2_f64 phases_generic_f64
#define phases_avx512_f64 phases_generic_f64
#endif
#undef REAL
#undef SFX
#undef EXP
#undef TANH
#undef SQRT

/* ---- ISA dispatch -------------------------------------------------------------------- */
/* The variant SARNN_ISA_AUTO runs where the CPU supports it: AVX-512 measured faster than
 * AVX2 on an Intel Xeon (Sapphire Rapids) for every benchmark configuration; see
 * docs/BENCHMARKS.md. */
static int isa_forced = SARNN_ISA_AUTO;
static int isa_hidden[SARNN_NISAS];   /* test hook: variants reported as unsupported */

int sarnn_isa_supported(int isa)
{
    if (isa < 0 || isa >= SARNN_NISAS || isa_hidden[isa])
        return 0;
    if (isa == SARNN_ISA_GENERIC)
        return 1;
#if HAVE_X86_VARIANTS
    __builtin_cpu_init();
    if (isa == SARNN_ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int sarnn_isa(void)
{
    const int forced = __atomic_load_n(&isa_forced, __ATOMIC_RELAXED);
    if (forced != SARNN_ISA_AUTO)
        return forced;
    if (sarnn_isa_supported(SARNN_ISA_AVX512))
        return SARNN_ISA_AVX512;
    if (sarnn_isa_supported(SARNN_ISA_AVX2))
        return SARNN_ISA_AVX2;
    return SARNN_ISA_GENERIC;
}

int sarnn_set_isa(int isa)
{
    if (isa != SARNN_ISA_AUTO && !sarnn_isa_supported(isa))
        return SARNN_EISA;
    __atomic_store_n(&isa_forced, isa, __ATOMIC_RELAXED);
    return SARNN_OK;
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

/* ---- single-stream split settings ---------------------------------------------------- */
#define SARNN_CHUNKS_PER_THREAD 4   /* chunks per team thread and step, at most */
#define SARNN_HELPER_SPINS 256      /* pause loops of an idle helper before it sleeps */
#define SARNN_MAX_HELPERS 63        /* helper threads of the split, at most */
#define SARNN_PROBE_WINDOW 16       /* units of a probe of the other mode */

typedef struct {
    int64_t min_positions, chunk_min, stall_ns, probe_period, choice;
} split_params;

static split_params split_settings = {256, 64, 50000, 256, SARNN_SPLIT_MEASURE};

/* Chooses between splitting (mode 1) and serial (mode 0) from measured time per attended
 * position, per unit (a step of a forward, or a whole one-token call): it runs the faster
 * mode for probe_period units, then probes the other for SARNN_PROBE_WINDOW units, and so
 * on; fresh (left = 0), it probes split, then serial, then runs the faster. Per calling
 * thread. */
typedef struct {
    double ns[2], pos[2];    /* this window's time and positions, per mode */
    double rate[2];          /* last measured ns per position, per mode (0: unknown) */
    int mode, probing;
    int64_t left;            /* units left in this window */
} split_chooser;

#define CHOOSER_INIT {{0, 0}, {0, 0}, {0, 0}, 1, 1, 0}
static __thread split_chooser chooser_steps = CHOOSER_INIT, chooser_calls = CHOOSER_INIT;

int64_t sarnn_set_split_min(int64_t min_positions)
{
    int64_t old = __atomic_load_n(&split_settings.min_positions, __ATOMIC_RELAXED);
    if (min_positions >= 1)
        __atomic_store_n(&split_settings.min_positions, min_positions, __ATOMIC_RELAXED);
    return old;
}

void sarnn_set_split_guard(int64_t chunk_min, int64_t stall_ns, int64_t probe_period)
{
    if (chunk_min >= 1)
        __atomic_store_n(&split_settings.chunk_min, chunk_min, __ATOMIC_RELAXED);
    if (stall_ns >= 1)
        __atomic_store_n(&split_settings.stall_ns, stall_ns, __ATOMIC_RELAXED);
    if (probe_period >= 1)
        __atomic_store_n(&split_settings.probe_period, probe_period, __ATOMIC_RELAXED);
    const split_chooser fresh = CHOOSER_INIT;   /* this thread starts measuring afresh */
    chooser_steps = fresh;
    chooser_calls = fresh;
}

int sarnn_set_split_choice(int choice)
{
    if (choice != SARNN_SPLIT_MEASURE && choice != SARNN_SPLIT_NEVER &&
        choice != SARNN_SPLIT_ALWAYS)
        return SARNN_ECODE;
    __atomic_store_n(&split_settings.choice, choice, __ATOMIC_RELAXED);
    return SARNN_OK;
}

static split_params current_split_params(void)
{
    split_params p;
    p.choice = __atomic_load_n(&split_settings.choice, __ATOMIC_RELAXED);
    p.min_positions = __atomic_load_n(&split_settings.min_positions, __ATOMIC_RELAXED);
    p.chunk_min = __atomic_load_n(&split_settings.chunk_min, __ATOMIC_RELAXED);
    p.stall_ns = __atomic_load_n(&split_settings.stall_ns, __ATOMIC_RELAXED);
    p.probe_period = __atomic_load_n(&split_settings.probe_period, __ATOMIC_RELAXED);
    return p;
}

static inline void chooser_next_window(split_chooser *c, const split_params *p)
{
    const int m = c->mode;
    if (c->pos[m] == 0 && c->rate[0] == 0 && c->rate[1] == 0) {   /* fresh: probe split */
        c->mode = 1;
        c->probing = 1;
        c->left = SARNN_PROBE_WINDOW;
        return;
    }
    if (c->pos[m] > 0)
        c->rate[m] = c->ns[m] / c->pos[m];
    c->ns[0] = c->ns[1] = c->pos[0] = c->pos[1] = 0;
    if (!c->probing || c->rate[!m] == 0) {     /* probe the other mode */
        c->mode = !m;
        c->probing = 1;
        c->left = SARNN_PROBE_WINDOW;
    } else {                                   /* run the faster one */
        c->mode = c->rate[1] <= c->rate[0];
        c->probing = 0;
        c->left = p->probe_period;
    }
}

/* 1: split this unit, 0: run it serially (or what sarnn_set_split_choice forces). */
static inline int chooser_pick(split_chooser *c, const split_params *p)
{
    if (p->choice != SARNN_SPLIT_MEASURE)
        return p->choice == SARNN_SPLIT_ALWAYS;
    if (c->left <= 0)
        chooser_next_window(c, p);
    return c->mode;
}

static inline void chooser_record(split_chooser *c, int mode, double ns, int64_t positions)
{
    c->ns[mode] += ns;
    c->pos[mode] += (double)positions;
    c->left--;
}

/* A split unit stalled on a helper: serial for the next probe_period units. */
static inline void chooser_stalled(split_chooser *c, const split_params *p, double ns,
                                   int64_t positions)
{
    c->rate[1] = ns / (double)(positions > 0 ? positions : 1);
    c->ns[0] = c->ns[1] = c->pos[0] = c->pos[1] = 0;
    c->mode = 0;
    c->probing = 0;
    c->left = p->probe_period;
}

static __thread sarnn_call_stats last_stats = {0, 0, 0, 0, -1};

void sarnn_last_call_stats(sarnn_call_stats *out)
{
    if (out)
        *out = last_stats;
}

static inline double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Sleep while *word == expected (at most 2 ms: a safety net, never needed for progress). */
static inline void futex_wait(uint32_t *word, uint32_t expected)
{
#ifdef __linux__
    struct timespec ts = {0, 2000000};
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, &ts, NULL, 0);
#else
    (void)word;
    (void)expected;
    sched_yield();
#endif
}

static inline void futex_wake_all(uint32_t *word)
{
#ifdef __linux__
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* ---- allocation and test hooks ------------------------------------------------------- */
#ifdef SARNN_TESTING
static int64_t test_alloc_countdown = 0;
static int64_t test_stall_step = -1, test_stall_ns = 0;
#endif

int sarnn_testing(void)
{
#ifdef SARNN_TESTING
    return 1;
#else
    return 0;
#endif
}

int sarnn_test_fail_alloc(int64_t n)
{
#ifdef SARNN_TESTING
    __atomic_store_n(&test_alloc_countdown, n > 0 ? n : 0, __ATOMIC_SEQ_CST);
    return 1;
#else
    (void)n;
    return 0;
#endif
}

int sarnn_test_stall_helper(int64_t step, int64_t ns)
{
#ifdef SARNN_TESTING
    __atomic_store_n(&test_stall_ns, ns, __ATOMIC_SEQ_CST);
    __atomic_store_n(&test_stall_step, step, __ATOMIC_SEQ_CST);
    return 1;
#else
    (void)step;
    (void)ns;
    return 0;
#endif
}

int sarnn_test_hide_isa(int isa, int on)
{
#ifdef SARNN_TESTING
    if (isa < 0 || isa >= SARNN_NISAS)
        return 0;
    isa_hidden[isa] = on != 0;
    if (on && __atomic_load_n(&isa_forced, __ATOMIC_RELAXED) == isa)
        __atomic_store_n(&isa_forced, SARNN_ISA_AUTO, __ATOMIC_RELAXED);
    return 1;
#else
    (void)isa;
    (void)on;
    return 0;
#endif
}

/* A helper about to compute a chunk of `step` sleeps when a test asked it to. */
static inline void test_stall_helper(int64_t step)
{
#ifdef SARNN_TESTING
    if (step == __atomic_load_n(&test_stall_step, __ATOMIC_RELAXED)) {
        int64_t ns = __atomic_load_n(&test_stall_ns, __ATOMIC_RELAXED);
        struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
        nanosleep(&ts, 0);
    }
#else
    (void)step;
#endif
}

/* 64-byte aligned kernel workspace; NULL on failure (or when a test injects one). */
static void *sarnn_alloc(size_t bytes)
{
#ifdef SARNN_TESTING
    int64_t left = __atomic_load_n(&test_alloc_countdown, __ATOMIC_SEQ_CST);
    if (left > 0 && __atomic_sub_fetch(&test_alloc_countdown, 1, __ATOMIC_SEQ_CST) == 0)
        return 0;
#endif
    void *p = 0;
    if (posix_memalign(&p, 64, ((bytes + 63) / 64) * 64) != 0)
        return 0;
    return p;
}

/* Steps row b runs: its length (forward), or 1 / 0 for an active / inactive row (step). */
static inline int64_t row_len(const int64_t *lengths, const uint8_t *active, int64_t b)
{
    return lengths ? lengths[b] : (active[b] ? 1 : 0);
}

/* ---- the helper pool of the single-stream split -------------------------------------- */
/* Helper threads live for the process and serve one split call at a time (the owner, who
 * acquired the pool). A helper claims chunk j of the published step by compare-and-swap on
 * the claim word (seq << 32 | nch << 16 | next), runs the job's chunk function, and counts
 * done; it counts itself inflight from before its claim until after its done count. Idle,
 * it spins briefly, then sleeps on the futex word wake_gen. */
typedef void (*chunk_fn)(void *job, int64_t j, int64_t nch);

static struct {
    uint64_t claim;          /* atomic */
    int64_t done;            /* atomic: chunks of the published step finished by helpers */
    int inflight;            /* atomic: helpers between a claim attempt and its done count */
    int sleepers;            /* atomic: helpers asleep (or about to be) on wake_gen */
    uint32_t wake_gen;       /* atomic futex word */
    int busy;                /* atomic: a call owns the pool */
    uint64_t seq;            /* last published step (owner only) */
    void *job;               /* atomic pointer: the owner's job */
    chunk_fn run;
    int started;             /* helper threads created (under lock) */
    pthread_mutex_t lock;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *pool_helper_main(void *arg)
{
    (void)arg;
    int idle = 0;
    for (;;) {
        uint64_t w = __atomic_load_n(&pool.claim, __ATOMIC_SEQ_CST);
        const uint64_t nch = (w >> 16) & 0xffff, j = w & 0xffff;
        if ((w >> 32) && j < nch) {
            __atomic_fetch_add(&pool.inflight, 1, __ATOMIC_SEQ_CST);
            if (__atomic_compare_exchange_n(&pool.claim, &w, w + 1, 0, __ATOMIC_SEQ_CST,
                                            __ATOMIC_SEQ_CST)) {
                void *job = __atomic_load_n(&pool.job, __ATOMIC_ACQUIRE);
                chunk_fn run = __atomic_load_n(&pool.run, __ATOMIC_ACQUIRE);
                run(job, (int64_t)j, (int64_t)nch);
                __atomic_fetch_add(&pool.done, 1, __ATOMIC_RELEASE);
            }
            __atomic_fetch_sub(&pool.inflight, 1, __ATOMIC_SEQ_CST);
            idle = 0;
            continue;
        }
        if (++idle < SARNN_HELPER_SPINS) {
            cpu_relax();
            continue;
        }
        /* Announce the sleep, then re-check the claim word: the owner stores the word, then
         * reads sleepers (both sequentially consistent), so one of us sees the other. */
        const uint32_t gen = __atomic_load_n(&pool.wake_gen, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&pool.sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&pool.claim, __ATOMIC_SEQ_CST) == w)
            futex_wait(&pool.wake_gen, gen);
        __atomic_fetch_sub(&pool.sleepers, 1, __ATOMIC_SEQ_CST);
        idle = 0;
    }
    return 0;
}

/* In a child after fork() no helper thread exists: start from an empty pool. */
static void pool_after_fork_in_child(void)
{
    pool.claim = 0;
    pool.done = 0;
    pool.inflight = 0;
    pool.sleepers = 0;
    pool.busy = 0;
    pool.started = 0;
    pool.job = 0;
    pthread_mutex_init(&pool.lock, 0);
}

/* Own the pool with at least `helpers` helper threads started (at most
 * SARNN_MAX_HELPERS); 0 when another call owns it or no helper could start. */
static int pool_acquire(int helpers)
{
    int expect = 0;
    if (!__atomic_compare_exchange_n(&pool.busy, &expect, 1, 0, __ATOMIC_ACQUIRE,
                                     __ATOMIC_RELAXED))
        return 0;
    if (helpers > SARNN_MAX_HELPERS)
        helpers = SARNN_MAX_HELPERS;
    if (__atomic_load_n(&pool.started, __ATOMIC_ACQUIRE) < helpers) {
        static int atfork_registered = 0;
        pthread_mutex_lock(&pool.lock);
        if (!atfork_registered)
            atfork_registered = pthread_atfork(0, 0, pool_after_fork_in_child) == 0;
        while (pool.started < helpers) {
            pthread_t t;
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            int rc = pthread_create(&t, &attr, pool_helper_main, 0);
            pthread_attr_destroy(&attr);
            if (rc != 0)
                break;
            __atomic_store_n(&pool.started, pool.started + 1, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&pool.lock);
    }
    if (__atomic_load_n(&pool.started, __ATOMIC_ACQUIRE) < 1) {
        __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
        return 0;
    }
    return 1;
}

static void pool_set_job(void *job, chunk_fn run)
{
    __atomic_store_n(&pool.job, job, __ATOMIC_RELEASE);
    __atomic_store_n(&pool.run, run, __ATOMIC_RELEASE);
}

/* Publish the next step in nch chunks (the job's descriptor is written); wake sleepers. */
static uint64_t pool_publish(int64_t nch)
{
    pool.seq = (pool.seq + 1) & 0xffffffffu;
    if (!pool.seq)
        pool.seq = 1;
    const uint64_t w = (pool.seq << 32) | ((uint64_t)nch << 16);
    __atomic_store_n(&pool.done, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&pool.claim, w, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool.sleepers, __ATOMIC_SEQ_CST) > 0) {
        __atomic_fetch_add(&pool.wake_gen, 1, __ATOMIC_SEQ_CST);
        futex_wake_all(&pool.wake_gen);
    }
    return w;
}

/* The owner claims the next chunk (>= nch: none left). */
static inline int64_t pool_take(void)
{
    return (int64_t)(__atomic_fetch_add(&pool.claim, 1, __ATOMIC_SEQ_CST) & 0xffff);
}

/* Wait until helpers finished `theirs` chunks: 1; or, past stall_ns, close the claim word
 * and return 0 (the late chunk is abandoned). */
static int pool_wait_done(int64_t theirs, int64_t stall_ns)
{
    if (__atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) >= theirs)
        return 1;
    const double t0 = now_ns();
    for (int spin = 1; __atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) < theirs; spin++) {
        cpu_relax();
        if (spin % 32 == 0 && now_ns() - t0 > (double)stall_ns) {
            __atomic_store_n(&pool.claim, 0, __ATOMIC_SEQ_CST);
            return 0;
        }
    }
    return 1;
}

/* End of the owner's call: nothing claimable; wait for helpers inside a chunk; release. */
static void pool_release(void)
{
    __atomic_store_n(&pool.claim, 0, __ATOMIC_SEQ_CST);
    for (int spin = 0; __atomic_load_n(&pool.inflight, __ATOMIC_SEQ_CST) > 0; spin++) {
        if (spin < 1000)
            cpu_relax();
        else
            sched_yield();
    }
    __atomic_store_n(&pool.job, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
}

/* At the stall step of a test, the owner lets a helper claim the first chunk (waiting at
 * most 1 s) before it claims any itself, so the helper's stall is certain to be waited on. */
static inline void test_let_helper_claim(int64_t step, uint64_t published)
{
#ifdef SARNN_TESTING
    if (step == __atomic_load_n(&test_stall_step, __ATOMIC_RELAXED)) {
        const double t0 = now_ns();
        while (__atomic_load_n(&pool.claim, __ATOMIC_ACQUIRE) == published &&
               now_ns() - t0 < 1e9)
            cpu_relax();
    }
#else
    (void)step;
    (void)published;
#endif
}

/* ---- the drivers, once per dtype ----------------------------------------------------- */
#define REAL float
#define SFX(name) name##_f32
#include "sarnn_driver.h"
#undef REAL
#undef SFX

#define REAL double
#define SFX(name) name##_f64
#include "sarnn_driver.h"
#undef REAL
#undef SFX

/* ---- argument checks ----------------------------------------------------------------- */
static int check_model(const sarnn_model *m)
{
    if (!m)
        return SARNN_ENULL;
    if (m->score < 0 || m->score >= SARNN_NSCORES || m->recurrence < 0 ||
        m->recurrence >= SARNN_NRECURRENCES || m->dtype < 0 || m->dtype >= SARNN_NDTYPES)
        return SARNN_ECODE;
    const int keyed = score_is_keyed((enum sarnn_score)m->score);
    if (m->D < 1 || m->H < 1 || m->window < 0 || (keyed && m->Ha < 1) || (!keyed && m->Ha))
        return SARNN_ESIZE;
    if (!m->W_x || !m->W_c || !m->b || (m->recurrence == SARNN_RECURRENCE_HC && !m->W_h) ||
        (m->score == SARNN_SCORE_GENERAL && !m->W_s) || (keyed && (!m->W_k || !m->W_q)) ||
        (m->score == SARNN_SCORE_ADDITIVE && !m->v))
        return SARNN_EWEIGHT;
    return SARNN_OK;
}

/* lengths (or active flags when lengths is NULL) against T, positions and capacity. */
static int check_call(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
                      int64_t T, const int64_t *lengths, const uint8_t *active,
                      const void *out_h, const void *out_c, const void *attn,
                      int64_t attn_cols, int compact)
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
    if (compact && (!m->window || (attn && attn_cols < m->window)))
        return SARNN_ECOMPACT;
    if (batch == 0 || T == 0)
        return SARNN_OK;
    if (!x || !out_h || !out_c || (!lengths && !active) || !s->hist || !s->h || !s->c ||
        !s->positions)
        return SARNN_EDATA;
    if (key_dim(m) && !s->keys)
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
        if (attn && !compact && pos + len > attn_cols)
            return SARNN_EATTN;
    }
    return SARNN_OK;
}

/* ---- public entry points ------------------------------------------------------------- */
int sarnn_forward(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
                  int64_t T, const int64_t *lengths, void *out_h, void *out_c, void *out_attn,
                  int64_t attn_cols, int32_t compact_attention, int32_t num_threads)
{
    sarnn_call_stats stats = {0, 0, 0, 0, -1};
    const int compact = compact_attention != 0;
    int rc = check_call(m, s, x, batch, T, lengths, 0, out_h, out_c, out_attn, attn_cols,
                        compact);
    if (!rc && !lengths && batch > 0 && T > 0)
        rc = SARNN_EDATA;
    if (!rc && batch > 0 && T > 0) {
        if (m->dtype == SARNN_FLOAT32)
            rc = drive_f32(m, s, (const float *)x, batch, T, lengths, 0, (float *)out_h,
                           (float *)out_c, (float *)out_attn, attn_cols, compact, num_threads,
                           &stats);
        else
            rc = drive_f64(m, s, (const double *)x, batch, T, lengths, 0, (double *)out_h,
                           (double *)out_c, (double *)out_attn, attn_cols, compact,
                           num_threads, &stats);
    }
    last_stats = stats;
    return rc;
}

int sarnn_step(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
               const uint8_t *active, void *out_h, void *out_c, int32_t num_threads)
{
    sarnn_call_stats stats = {0, 0, 0, 0, -1};
    int rc = check_call(m, s, x, batch, 1, 0, active, out_h, out_c, 0, 0, 0);
    if (!rc && !active && batch > 0)
        rc = SARNN_EDATA;
    if (!rc && batch > 0) {
        if (m->dtype == SARNN_FLOAT32)
            rc = drive_f32(m, s, (const float *)x, batch, 1, 0, active, (float *)out_h,
                           (float *)out_c, 0, 0, 0, num_threads, &stats);
        else
            rc = drive_f64(m, s, (const double *)x, batch, 1, 0, active, (double *)out_h,
                           (double *)out_c, 0, 0, 0, num_threads, &stats);
    }
    last_stats = stats;
    return rc;
}
