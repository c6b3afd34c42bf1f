/* A C-only driver of the kernels for valgrind memcheck and the sanitizers: every score x
 * recurrence x window x dtype x kernel variant through sarnn_forward (dense and compact
 * attention, the batch over threads, one stream split over threads) and sarnn_step, plus
 * rejected calls, on buffers malloc'd to their exact sizes. Built with -DSARNN_TESTING, it
 * also injects allocation failures (state and outputs must stay unchanged), a stalled
 * helper (the split must fall back to serial) and an unsupported variant.
 * Exit status: the number of failed checks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sarnn.h"

#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            printf("FAILED %s:%d: ", __FILE__, __LINE__);                                   \
            printf(__VA_ARGS__);                                                            \
            printf("\n");                                                                   \
            failures++;                                                                     \
        }                                                                                   \
    } while (0)

static int keyed(int score) { return score == SARNN_SCORE_KQ || score == SARNN_SCORE_ADDITIVE; }

static unsigned lcg = 12345u;

static void *filled(size_t n, int dtype, double scale)
{
    size_t es = dtype ? sizeof(double) : sizeof(float);
    void *p = malloc(n ? n * es : 1);
    for (size_t i = 0; i < n; i++) {
        lcg = lcg * 1103515245u + 12345u;
        double v = scale * (((lcg >> 8) & 0xffff) / 32768.0 - 1.0);
        if (dtype)
            ((double *)p)[i] = v;
        else
            ((float *)p)[i] = (float)v;
    }
    return p;
}

static int run_case(int score, int recurrence, int64_t window, int dtype)
{
    const int64_t D = 3, H = 5, Ha = 4, B = 2, T = 6;
    const int64_t cap = window ? window : T + 1;
    int failures = 0;
    sarnn_model m;
    memset(&m, 0, sizeof m);
    m.D = D; m.H = H; m.Ha = keyed(score) ? Ha : 0;
    m.score = score; m.recurrence = recurrence; m.dtype = dtype; m.window = window;
    void *W_x = filled(H * D, dtype, 0.4), *W_c = filled(H * H, dtype, 0.4);
    void *b = filled(H, dtype, 0.1);
    void *W_h = recurrence == SARNN_RECURRENCE_HC ? filled(H * H, dtype, 0.4) : NULL;
    void *W_s = score == SARNN_SCORE_GENERAL ? filled(H * H, dtype, 0.4) : NULL;
    void *W_k = keyed(score) ? filled(Ha * H, dtype, 0.4) : NULL;
    void *W_q = keyed(score) ? filled(Ha * H, dtype, 0.4) : NULL;
    void *v = score == SARNN_SCORE_ADDITIVE ? filled(Ha, dtype, 0.4) : NULL;
    m.W_x = W_x; m.W_c = W_c; m.b = b; m.W_h = W_h; m.W_s = W_s; m.W_k = W_k; m.W_q = W_q;
    m.v = v;

    sarnn_state s;
    s.batch = B; s.capacity = cap;
    s.hist = filled(B * cap * H, dtype, 0.0);
    s.keys = keyed(score) ? filled(B * cap * Ha, dtype, 0.0) : NULL;
    s.h = filled(B * H, dtype, 0.0);
    s.c = filled(B * H, dtype, 0.0);
    s.positions = calloc(B, sizeof(int64_t));

    void *x = filled(B * T * D, dtype, 1.0);
    int64_t lengths[2] = {T, 3};
    void *out_h = filled(B * T * H, dtype, 0.0), *out_c = filled(B * T * H, dtype, 0.0);
    void *attn = filled(B * T * T, dtype, 0.0);
    int rc = sarnn_forward(&m, &s, x, B, T, lengths, out_h, out_c, attn, T, 0, 2);
    if (rc) { printf("forward failed: %s\n", sarnn_error_message(rc)); failures++; }
    if (window) {   /* compact attention: attn_cols == window */
        sarnn_state s2 = s;
        int64_t pos2[2] = {0, 0};
        void *ca = filled(B * T * window, dtype, 0.0);
        void *h2 = filled(B * T * H, dtype, 0.0), *c2 = filled(B * T * H, dtype, 0.0);
        s2.hist = filled(B * cap * H, dtype, 0.0);
        s2.keys = keyed(score) ? filled(B * cap * Ha, dtype, 0.0) : NULL;
        s2.h = filled(B * H, dtype, 0.0);
        s2.c = filled(B * H, dtype, 0.0);
        s2.positions = pos2;
        rc = sarnn_forward(&m, &s2, x, B, T, lengths, h2, c2, ca, window, 1, 2);
        CHECK(rc == 0, "compact forward: %s", sarnn_error_message(rc));
        CHECK(sarnn_forward(&m, &s2, x, B, T, lengths, h2, c2, ca, window - 1, 1, 2) != 0,
              "compact attention with attn_cols < window accepted");
        free(ca); free(h2); free(c2); free(s2.hist); free(s2.keys); free(s2.h); free(s2.c);
    } else {
        CHECK(sarnn_forward(&m, &s, x, B, T, lengths, out_h, out_c, attn, T, 1, 2) != 0,
              "compact attention without a window accepted");
    }

    void *x1 = filled(B * D, dtype, 1.0);
    uint8_t active[2] = {1, 0};
    void *sh = filled(B * H, dtype, 0.0), *sc = filled(B * H, dtype, 0.0);
    rc = sarnn_step(&m, &s, x1, B, active, sh, sc, 1);
    if (rc) { printf("step failed: %s\n", sarnn_error_message(rc)); failures++; }
    if (s.positions[0] != T + 1 || s.positions[1] != 3) { printf("positions\n"); failures++; }

    /* rejected calls: nothing may be read or written */
    int64_t too_long[2] = {T + 1, 0};
    if (!sarnn_forward(&m, &s, x, B, T, too_long, out_h, out_c, NULL, 0, 0, 1)) failures++;
    if (!window) {   /* capacity cannot hold another T steps */
        int64_t full[2] = {T, T};
        if (!sarnn_forward(&m, &s, x, B, T, full, out_h, out_c, NULL, 0, 0, 1)) failures++;
    }
    if (!sarnn_forward(&m, &s, x, B + 1, T, lengths, out_h, out_c, NULL, 0, 0, 1)) failures++;
    if (!sarnn_forward(NULL, &s, x, B, T, lengths, out_h, out_c, NULL, 0, 0, 1)) failures++;
    if (!keyed(score)) {   /* Ha must be 0 for scores without keys: Ha > H writes nowhere */
        sarnn_model big = m;
        int64_t zero_pos[2] = {0, 0};
        sarnn_state fresh = s;   /* a call that only Ha can make invalid */
        fresh.positions = zero_pos;
        big.Ha = H + 100;
        CHECK(sarnn_forward(&big, &fresh, x, B, T, lengths, out_h, out_c, attn, T, 0, 2) != 0,
              "score %d with Ha = %ld accepted", score, (long)big.Ha);
        CHECK(sarnn_step(&big, &s, x1, B, active, sh, sc, 1) != 0, "step with Ha > 0");
    }
    if (!sarnn_step(&m, &s, NULL, B, active, sh, sc, 1)) failures++;

    free(W_x); free(W_c); free(b); free(W_h); free(W_s); free(W_k); free(W_q); free(v);
    free(s.hist); free(s.keys); free(s.h); free(s.c); free(s.positions);
    free(x); free(out_h); free(out_c); free(attn); free(x1); free(sh); free(sc);
    return failures;
}

static int bytes_equal(const void *a, const void *b, size_t n) { return !memcmp(a, b, n); }

/* With -DSARNN_TESTING: the n-th allocation of a call fails, for the batch driver over
 * threads, the serial driver and the split driver: the call returns an error and every
 * state buffer and output is exactly as before. */
static int check_enomem(void)
{
    int failures = 0;
    const int64_t D = 3, H = 5, B = 3, T = 4, cap = 16;
    sarnn_model m;
    memset(&m, 0, sizeof m);
    m.D = D; m.H = H; m.score = SARNN_SCORE_DOT; m.dtype = SARNN_FLOAT32;
    m.W_x = filled(H * D, 0, 0.4); m.W_c = filled(H * H, 0, 0.4); m.b = filled(H, 0, 0.1);
    int64_t batches[3] = {B, 1, 1}, threads[3] = {2, 1, 2};
    for (int c = 0; c < 3; c++) {
        const int64_t nb = batches[c];
        sarnn_state s = {nb, cap, filled(nb * cap * H, 0, 0.3), NULL, filled(nb * H, 0, 0.3),
                         filled(nb * H, 0, 0.3), calloc(nb, sizeof(int64_t))};
        s.positions[0] = 2;
        void *x = filled(nb * T * D, 0, 1.0);
        int64_t lengths[3] = {T, 2, 3};
        void *oh = filled(nb * T * H, 0, 0.5), *oc = filled(nb * T * H, 0, 0.5);
        void *at = filled(nb * T * (T + 2), 0, 0.5);
        void *snap[6];
        size_t sz[6] = {nb * cap * H * 4, nb * H * 4, nb * H * 4, nb * 8, nb * T * H * 4,
                        nb * T * (T + 2) * 4};
        void *bufs[6] = {s.hist, s.h, s.c, s.positions, oh, at};
        for (int k = 0; k < 6; k++) { snap[k] = malloc(sz[k]); memcpy(snap[k], bufs[k], sz[k]); }
        sarnn_test_fail_alloc(1);
        int rc = sarnn_forward(&m, &s, x, nb, T, lengths, oh, oc, at, T + 2, 0,
                               (int32_t)threads[c]);
        CHECK(rc != 0 && strstr(sarnn_error_message(rc), "memory"), "case %d: ENOMEM not reported", c);
        for (int k = 0; k < 6; k++)
            CHECK(bytes_equal(snap[k], bufs[k], sz[k]), "case %d: buffer %d changed on ENOMEM", c, k);
        sarnn_test_fail_alloc(0);
        rc = sarnn_forward(&m, &s, x, nb, T, lengths, oh, oc, at, T + 2, 0, (int32_t)threads[c]);
        CHECK(rc == 0, "case %d: forward after ENOMEM: %s", c, sarnn_error_message(rc));
        CHECK(s.positions[0] == 2 + T, "case %d: positions", c);
        for (int k = 0; k < 6; k++) free(snap[k]);
        free(s.hist); free(s.h); free(s.c); free(s.positions); free(x); free(oh); free(oc);
        free(at);
    }
    free((void *)m.W_x); free((void *)m.W_c); free((void *)m.b);
    return failures;
}

/* With -DSARNN_TESTING and OpenMP: a helper that stalls at step 3 makes the leader fall
 * back to serial from that step on, and the result equals the one-thread result. The
 * guard waits 200 ms here and the stall lasts 1 s, so that a helper merely slow to be
 * scheduled (valgrind serialises threads; a loaded machine) does not trip it earlier. */
static int check_stall_fallback(void)
{
    int failures = 0;
    if (sarnn_max_threads() < 2)
        return 0;
    const int64_t D = 3, H = 8, T = 12;
    sarnn_set_split_guard(0, 200000000, 0);
    sarnn_model m;
    memset(&m, 0, sizeof m);
    m.D = D; m.H = H; m.score = SARNN_SCORE_DOT; m.dtype = SARNN_FLOAT64;
    m.W_x = filled(H * D, 1, 0.4); m.W_c = filled(H * H, 1, 0.4); m.b = filled(H, 1, 0.1);
    void *x = filled(T * D, 1, 1.0);
    double out[2][2][T * H], attn[2][T * T];
    memset(attn, 0, sizeof attn);
    for (int run = 0; run < 2; run++) {
        double *hist = calloc(T * H, 8), *h = calloc(H, 8), *c = calloc(H, 8);
        int64_t pos = 0, len = T;
        sarnn_state s = {1, T, hist, NULL, h, c, &pos};
        if (run == 1) sarnn_test_stall_helper(3, 1000000000);   /* 1 s at step 3 */
        int rc = sarnn_forward(&m, &s, x, 1, T, &len, out[run][0], out[run][1], attn[run], T,
                               0, run == 0 ? 1 : 2);
        sarnn_test_stall_helper(-1, 0);
        sarnn_call_stats st;
        sarnn_last_call_stats(&st);
        CHECK(rc == 0, "stall run %d: %s", run, sarnn_error_message(rc));
        CHECK(st.steps == T, "stall run %d: %ld steps", run, (long)st.steps);
        if (run == 1) {
            CHECK(st.fallback_step == 3, "fallback at step %ld, expected 3", (long)st.fallback_step);
            CHECK(st.steps_split == 3, "%ld steps split, expected 3 (1..3; step 0 has one position)",
                  (long)st.steps_split);
        } else {
            CHECK(st.steps_split == 0 && st.fallback_step == -1, "one thread split");
        }
        free(hist); free(h); free(c);
    }
    double worst = 0;
    for (int k = 0; k < T * H; k++) {
        double d = out[0][1][k] - out[1][1][k];
        worst = d < 0 ? (-d > worst ? -d : worst) : (d > worst ? d : worst);
    }
    for (int k = 0; k < T * T; k++) {
        double d = attn[0][k] - attn[1][k];
        worst = d < 0 ? (-d > worst ? -d : worst) : (d > worst ? d : worst);
    }
    CHECK(worst < 1e-12, "fallback result differs from serial by %g", worst);
    sarnn_set_split_guard(0, 50000, 0);     /* the default guard again */
    free((void *)m.W_x); free((void *)m.W_c); free((void *)m.b); free(x);
    return failures;
}

int main(void)
{
    int failures = 0, cases = 0;
    int64_t windows[3] = {0, 1, 4};
    sarnn_set_split_min(1);   /* one stream splits from the first step, in chunks of 1 */
    sarnn_set_split_guard(1, 0, 0);
    for (int isa = 0; isa < SARNN_NISAS; isa++) {
        if (!sarnn_isa_supported(isa))
            continue;
        CHECK(sarnn_set_isa(isa) == 0 && sarnn_isa() == isa, "set_isa(%d)", isa);
        for (int score = 0; score < SARNN_NSCORES; score++)
            for (int rec = 0; rec < SARNN_NRECURRENCES; rec++)
                for (int w = 0; w < 3; w++)
                    for (int dtype = 0; dtype < SARNN_NDTYPES; dtype++) {
                        failures += run_case(score, rec, windows[w], dtype);
                        cases++;
                    }
    }
    CHECK(sarnn_set_isa(SARNN_NISAS) != 0, "unknown variant accepted");
    CHECK(sarnn_set_isa(SARNN_ISA_AUTO) == 0, "auto");
    if (sarnn_testing()) {
        failures += check_enomem();
        failures += check_stall_fallback();
        sarnn_test_hide_isa(SARNN_ISA_AVX2, 1);
        CHECK(sarnn_set_isa(SARNN_ISA_AVX2) != 0, "a variant the CPU lacks was accepted");
        CHECK(sarnn_isa() != SARNN_ISA_AVX2, "hidden variant runs");
        sarnn_test_hide_isa(SARNN_ISA_AVX2, 0);
        cases += 3;
    }
    printf("%d cases, %d failures, isa %d, testing hooks %d, threads %d\n", cases, failures,
           sarnn_isa(), sarnn_testing(), sarnn_max_threads());
    return failures;
}
