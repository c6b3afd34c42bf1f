/* sarnn_kernel.h: the per-sequence kernel, instantiated by sarnn.c once per dtype.
 *
 * The includer defines REAL (float or double), SFX(name) (name##_f32 / name##_f64) and
 * EXP, TANH, SQRT for REAL. Every helper is always_inline so that each ISA wrapper
 * (sarnn_phases.h) compiles the whole kernel for its own target (AVX-512, AVX2+FMA or
 * baseline x86-64).
 *
 * Fast-math is on (compile flags only): no helper relies on inf or NaN. The running max of
 * the online softmax starts from the first score, never from -inf.
 */

/* s = a . b over n elements */
INLINE REAL SFX(dot)(const REAL *restrict a, const REAL *restrict b, int64_t n)
{
    REAL s = 0;
    for (int64_t k = 0; k < n; k++)
        s += a[k] * b[k];
    return s;
}

/* e[i] = rows[i] . q for the SARNN_BLOCK rows rows[i] = base + i*n: eight independent
 * reductions in one pass, so the FMA chains overlap and q is read once per column. */
INLINE void SFX(dot_block)(const REAL *restrict base, int64_t n, const REAL *restrict q,
                           REAL *restrict e)
{
    const REAL *r0 = base, *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
    const REAL *r4 = r3 + n, *r5 = r4 + n, *r6 = r5 + n, *r7 = r6 + n;
    REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    for (int64_t k = 0; k < n; k++) {
        REAL qk = q[k];
        s0 += r0[k] * qk; s1 += r1[k] * qk; s2 += r2[k] * qk; s3 += r3[k] * qk;
        s4 += r4[k] * qk; s5 += r5[k] * qk; s6 += r6[k] * qk; s7 += r7[k] * qk;
    }
    e[0] = s0; e[1] = s1; e[2] = s2; e[3] = s3; e[4] = s4; e[5] = s5; e[6] = s6; e[7] = s7;
}

/* y[j] += A[j, :] . x for j < rows (A is rows x n, row-major), four rows per pass. */
INLINE void SFX(gemv_acc)(REAL *restrict y, const REAL *restrict A, const REAL *restrict x,
                          int64_t rows, int64_t n)
{
    int64_t j = 0;
    for (; j + 4 <= rows; j += 4) {
        const REAL *a0 = A + j * n, *a1 = a0 + n, *a2 = a1 + n, *a3 = a2 + n;
        REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int64_t k = 0; k < n; k++) {
            REAL xk = x[k];
            s0 += a0[k] * xk; s1 += a1[k] * xk; s2 += a2[k] * xk; s3 += a3[k] * xk;
        }
        y[j] += s0; y[j + 1] += s1; y[j + 2] += s2; y[j + 3] += s3;
    }
    for (; j < rows; j++)
        y[j] += SFX(dot)(A + j * n, x, n);
}

/* Input projection for every step at once: out[r, :] = W_x x[r, :] + b for r < len
 * (a (len x D) x (D x H) product; four steps share each row of W_x). */
INLINE void SFX(project)(REAL *restrict out, const REAL *restrict W_x, const REAL *restrict b,
                         const REAL *restrict x, int64_t len, int64_t H, int64_t D)
{
    int64_t r = 0;
    for (; r + 4 <= len; r += 4) {
        const REAL *x0 = x + r * D, *x1 = x0 + D, *x2 = x1 + D, *x3 = x2 + D;
        REAL *o0 = out + r * H, *o1 = o0 + H, *o2 = o1 + H, *o3 = o2 + H;
        for (int64_t j = 0; j < H; j++) {
            const REAL *w = W_x + j * D;
            REAL s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            for (int64_t k = 0; k < D; k++) {
                REAL wk = w[k];
                s0 += wk * x0[k]; s1 += wk * x1[k]; s2 += wk * x2[k]; s3 += wk * x3[k];
            }
            o0[j] = s0 + b[j]; o1[j] = s1 + b[j]; o2[j] = s2 + b[j]; o3[j] = s3 + b[j];
        }
    }
    for (; r < len; r++)
        for (int64_t j = 0; j < H; j++)
            out[r * H + j] = SFX(dot)(W_x + j * D, x + r * D, D) + b[j];
}

/* Online softmax over a run of n consecutive history slots, folded into (m, l, acc):
 * invariant after each block, over every row i seen so far,
 *   m = max_i e_i,   l = sum_i exp(e_i - m),   acc = sum_i exp(e_i - m) vals[i].
 * Scores come from krows (kdim wide: states, or cached keys), values from vals (H wide).
 * Each row is read once from memory: its block is scored, then summed while still in L1.
 * Raw scores go to e_out[i] when e_out is not NULL (for the attention output). */
INLINE void SFX(attend_run)(enum sarnn_score score, const REAL *restrict krows, int64_t kdim,
                            const REAL *restrict vals, int64_t H, int64_t n,
                            const REAL *restrict q, const REAL *restrict v,
                            REAL *restrict acc, REAL *m_io, REAL *l_io, int *started,
                            REAL *restrict e_out)
{
    REAL m = *m_io, l = *l_io;
    for (int64_t i0 = 0; i0 < n; i0 += SARNN_BLOCK) {
        int64_t nb = n - i0 < SARNN_BLOCK ? n - i0 : SARNN_BLOCK;
        const REAL *kb = krows + i0 * kdim;
        const REAL *vb = vals + i0 * H;
        REAL e[SARNN_BLOCK], p[SARNN_BLOCK];
        if (score == SARNN_SCORE_ADDITIVE) {   /* additive: e_i = v . tanh(k_i + q) */
            for (int64_t i = 0; i < nb; i++) {
                const REAL *k_i = kb + i * kdim;
                REAL s = 0;
                for (int64_t a = 0; a < kdim; a++)
                    s += v[a] * TANH(k_i[a] + q[a]);
                e[i] = s;
            }
        } else if (nb == SARNN_BLOCK) {
            SFX(dot_block)(kb, kdim, q, e);
        } else {
            for (int64_t i = 0; i < nb; i++)
                e[i] = SFX(dot)(kb + i * kdim, q, kdim);
        }
        if (e_out)
            for (int64_t i = 0; i < nb; i++)
                e_out[i0 + i] = e[i];
        REAL bm = e[0];
        for (int64_t i = 1; i < nb; i++)
            bm = e[i] > bm ? e[i] : bm;
        if (!*started) {
            m = bm;
            l = 0;
            *started = 1;
        } else if (bm > m) {         /* new running max: rescale what was summed so far */
            REAL scale = EXP(m - bm);
            l *= scale;
            for (int64_t k = 0; k < H; k++)
                acc[k] *= scale;
            m = bm;
        }
        if (nb == SARNN_BLOCK) {
            _Pragma("omp simd")
            for (int64_t i = 0; i < SARNN_BLOCK; i++)
                p[i] = EXP(e[i] - m);
            l += ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
            const REAL *v0 = vb, *v1 = v0 + H, *v2 = v1 + H, *v3 = v2 + H;
            const REAL *v4 = v3 + H, *v5 = v4 + H, *v6 = v5 + H, *v7 = v6 + H;
            const REAL p0 = p[0], p1 = p[1], p2 = p[2], p3 = p[3];
            const REAL p4 = p[4], p5 = p[5], p6 = p[6], p7 = p[7];
            for (int64_t k = 0; k < H; k++) {
                REAL a = acc[k] + p0 * v0[k];
                a += p1 * v1[k];
                a += p2 * v2[k];
                a += p3 * v3[k];
                a += p4 * v4[k];
                a += p5 * v5[k];
                a += p6 * v6[k];
                a += p7 * v7[k];
                acc[k] = a;
            }
        } else {
            for (int64_t i = 0; i < nb; i++) {
                REAL pi = EXP(e[i] - m);
                const REAL *vi = vb + i * H;
                l += pi;
                for (int64_t k = 0; k < H; k++)
                    acc[k] += pi * vi[k];
            }
        }
    }
    *m_io = m;
    *l_io = l;
}

/* Steps 1-3 of one step at position p: h_t = tanh(proj + W_c c_{t-1} [+ W_h h_{t-1}]) in
 * place in h_t (which holds the input projection), appended at slot p % W (or p) with its
 * key, copied to hs; the query written to q. Returns the vector the scores dot with. */
INLINE const REAL *SFX(step_update)(const sarnn_model *mdl, REAL *hist, REAL *keys,
                                    REAL *hs, const REAL *cs, int64_t p, REAL *h_t, REAL *q)
{
    const int64_t H = mdl->H, Ha = mdl->Ha, W = mdl->window;
    const enum sarnn_score score = (enum sarnn_score)mdl->score;
    const int keyed = score_is_keyed(score);
    const int64_t kdim = keyed ? Ha : H;
    SFX(gemv_acc)(h_t, (const REAL *)mdl->W_c, cs, H, H);
    if (mdl->recurrence == SARNN_RECURRENCE_HC)
        SFX(gemv_acc)(h_t, (const REAL *)mdl->W_h, hs, H, H);
    for (int64_t j = 0; j < H; j++)
        h_t[j] = TANH(h_t[j]);
    const int64_t slot = W ? p % W : p;
    REAL *hslot = hist + slot * H;
    for (int64_t j = 0; j < H; j++) {
        hslot[j] = h_t[j];
        hs[j] = h_t[j];
    }
    if (keyed) {
        REAL *kslot = keys + slot * Ha;
        for (int64_t a = 0; a < Ha; a++)
            kslot[a] = 0;
        SFX(gemv_acc)(kslot, (const REAL *)mdl->W_k, h_t, Ha, H);
    }
    if (score == SARNN_SCORE_DOT)
        return h_t;
    if (score == SARNN_SCORE_SCALED_DOT) {
        const REAL inv_sqrt_h = (REAL)1 / SQRT((REAL)H);
        for (int64_t j = 0; j < H; j++)
            q[j] = h_t[j] * inv_sqrt_h;
        return q;
    }
    for (int64_t a = 0; a < kdim; a++)
        q[a] = 0;
    const REAL *W_sq = (const REAL *)(score == SARNN_SCORE_GENERAL ? mdl->W_s : mdl->W_q);
    SFX(gemv_acc)(q, W_sq, h_t, kdim, H);
    return q;
}

/* Fold attended positions lo..hi (absolute; slots p % W or p) into one online softmax
 * (m, l, acc, started as in attend_run); raw scores to e_out[0 .. hi-lo] if not NULL. */
INLINE void SFX(attend_positions)(const sarnn_model *mdl, const REAL *hist, const REAL *keys,
                                  int64_t lo, int64_t hi, const REAL *qv, REAL *acc,
                                  REAL *m, REAL *l, int *started, REAL *e_out)
{
    const int64_t H = mdl->H, W = mdl->window;
    const enum sarnn_score score = (enum sarnn_score)mdl->score;
    const int keyed = score_is_keyed(score);
    const int64_t kdim = keyed ? mdl->Ha : H;
    const REAL *krows = keyed ? keys : hist;
    const REAL *v = (const REAL *)mdl->v;
    const int64_t n = hi - lo + 1;
    if (n <= 0)
        return;
    if (W) {   /* ring buffer: slots lo%W .. W-1, then 0 .. */
        const int64_t s0 = lo % W;
        const int64_t n1 = n < W - s0 ? n : W - s0;
        SFX(attend_run)(score, krows + s0 * kdim, kdim, hist + s0 * H, H, n1, qv, v, acc, m, l,
                        started, e_out);
        if (n1 < n)
            SFX(attend_run)(score, krows, kdim, hist, H, n - n1, qv, v, acc, m, l, started,
                            e_out ? e_out + n1 : 0);
    } else {
        SFX(attend_run)(score, krows + lo * kdim, kdim, hist + lo * H, H, n, qv, v, acc, m, l,
                        started, e_out);
    }
}

/* Step 5: merge `parts` partial online softmaxes (acc rows of H values, m, l, started) into
 * c_t = sum_i alpha_i h_i, copied to cs; when e_row is not NULL, write the attention weights
 * e_row[i] = exp(e_raw[i] - max) / sum for the n raw scores e_raw (e_raw may be e_row).
 * Every part with started != 0 covered a disjoint run of positions; at least one did. */
INLINE void SFX(finish_step)(int64_t H, int parts, REAL *acc, const REAL *m, const REAL *l,
                             const int *started, REAL *c_t, REAL *cs, const REAL *e_raw,
                             REAL *e_row, int64_t n)
{
    int first = 0;
    while (!started[first])
        first++;
    REAL mx = m[first];
    for (int t = first + 1; t < parts; t++)
        if (started[t] && m[t] > mx)
            mx = m[t];
    REAL lsum = 0;
    for (int t = first; t < parts; t++) {
        if (!started[t])
            continue;
        REAL scale = EXP(m[t] - mx);
        lsum += l[t] * scale;
        if (t != first || scale != (REAL)1) {
            REAL *a = acc + (int64_t)t * H;
            if (t == first)
                for (int64_t k = 0; k < H; k++)
                    acc[k] = a[k] * scale;
            else
                for (int64_t k = 0; k < H; k++)
                    acc[k] += a[k] * scale;
        } else if (t != 0) {
            for (int64_t k = 0; k < H; k++)
                acc[k] = acc[(int64_t)t * H + k];
        }
    }
    const REAL inv_l = (REAL)1 / lsum;
    for (int64_t k = 0; k < H; k++) {
        c_t[k] = acc[k] * inv_l;
        cs[k] = c_t[k];
    }
    if (e_row)
        for (int64_t i = 0; i < n; i++)
            e_row[i] = EXP(e_raw[i] - mx) * inv_l;
}

/* One ISA variant of the kernel's phases (sarnn_phases.h fills one per variant). */
typedef struct {
    void (*project)(const sarnn_model *, REAL *, const REAL *, int64_t);
    const REAL *(*update)(const sarnn_model *, REAL *, REAL *, REAL *, const REAL *, int64_t,
                          REAL *, REAL *);
    void (*attend)(const sarnn_model *, const REAL *, const REAL *, int64_t, int64_t,
                   const REAL *, REAL *, REAL *, REAL *, int *, REAL *);
    void (*finish)(int64_t, int, REAL *, const REAL *, const REAL *, const int *, REAL *,
                   REAL *, const REAL *, REAL *, int64_t);
} SFX(phases);
