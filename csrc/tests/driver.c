/* A C-only driver of the kernels for valgrind memcheck: every score x recurrence x window x
 * dtype through sarnn_forward (with attention) and sarnn_step, plus rejected calls, on
 * buffers malloc'd to their exact sizes. Exit status: the number of failed checks. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sarnn.h"

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
    m.D = D; m.H = H; m.Ha = score >= 3 ? Ha : 0;
    m.score = score; m.recurrence = recurrence; m.dtype = dtype; m.window = window;
    void *W_x = filled(H * D, dtype, 0.4), *W_c = filled(H * H, dtype, 0.4);
    void *b = filled(H, dtype, 0.1);
    void *W_h = recurrence ? filled(H * H, dtype, 0.4) : NULL;
    void *W_s = score == 2 ? filled(H * H, dtype, 0.4) : NULL;
    void *W_k = score >= 3 ? filled(Ha * H, dtype, 0.4) : NULL;
    void *W_q = score >= 3 ? filled(Ha * H, dtype, 0.4) : NULL;
    void *v = score == 4 ? filled(Ha, dtype, 0.4) : NULL;
    m.W_x = W_x; m.W_c = W_c; m.b = b; m.W_h = W_h; m.W_s = W_s; m.W_k = W_k; m.W_q = W_q;
    m.v = v;

    sarnn_state s;
    s.batch = B; s.capacity = cap;
    s.hist = filled(B * cap * H, dtype, 0.0);
    s.keys = score >= 3 ? filled(B * cap * Ha, dtype, 0.0) : NULL;
    s.h = filled(B * H, dtype, 0.0);
    s.c = filled(B * H, dtype, 0.0);
    s.positions = calloc(B, sizeof(int64_t));

    void *x = filled(B * T * D, dtype, 1.0);
    int64_t lengths[2] = {T, 3};
    void *out_h = filled(B * T * H, dtype, 0.0), *out_c = filled(B * T * H, dtype, 0.0);
    void *attn = filled(B * T * T, dtype, 0.0);
    int rc = sarnn_forward(&m, &s, x, B, T, lengths, out_h, out_c, attn, T, 2);
    if (rc) { printf("forward failed: %s\n", sarnn_error_message(rc)); failures++; }

    void *x1 = filled(B * D, dtype, 1.0);
    uint8_t active[2] = {1, 0};
    void *sh = filled(B * H, dtype, 0.0), *sc = filled(B * H, dtype, 0.0);
    rc = sarnn_step(&m, &s, x1, B, active, sh, sc, 1);
    if (rc) { printf("step failed: %s\n", sarnn_error_message(rc)); failures++; }
    if (s.positions[0] != T + 1 || s.positions[1] != 3) { printf("positions\n"); failures++; }

    /* rejected calls: nothing may be read or written */
    int64_t too_long[2] = {T + 1, 0};
    if (!sarnn_forward(&m, &s, x, B, T, too_long, out_h, out_c, NULL, 0, 1)) failures++;
    if (!window) {   /* capacity cannot hold another T steps */
        int64_t full[2] = {T, T};
        if (!sarnn_forward(&m, &s, x, B, T, full, out_h, out_c, NULL, 0, 1)) failures++;
    }
    if (!sarnn_forward(&m, &s, x, B + 1, T, lengths, out_h, out_c, NULL, 0, 1)) failures++;
    if (!sarnn_forward(NULL, &s, x, B, T, lengths, out_h, out_c, NULL, 0, 1)) failures++;
    if (!sarnn_step(&m, &s, NULL, B, active, sh, sc, 1)) failures++;

    free(W_x); free(W_c); free(b); free(W_h); free(W_s); free(W_k); free(W_q); free(v);
    free(s.hist); free(s.keys); free(s.h); free(s.c); free(s.positions);
    free(x); free(out_h); free(out_c); free(attn); free(x1); free(sh); free(sc);
    return failures;
}

int main(void)
{
    int failures = 0, cases = 0;
    int64_t windows[3] = {0, 1, 4};
    for (int score = 0; score < 5; score++)
        for (int rec = 0; rec < 2; rec++)
            for (int w = 0; w < 3; w++)
                for (int dtype = 0; dtype < 2; dtype++) {
                    failures += run_case(score, rec, windows[w], dtype);
                    cases++;
                }
    sarnn_force_generic(1);
    failures += run_case(4, 1, 4, 0);
    printf("%d cases, %d failures, isa %d\n", cases + 1, failures, sarnn_isa());
    return failures;
}
