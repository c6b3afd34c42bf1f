/* sarnn_driver.h: the step loop and the drivers, included by sarnn.c once per dtype (after
 * sarnn_kernel.h and the sarnn_phases.h variants of that dtype). The includer defines REAL
 * and SFX(name).
 *
 * One step loop (run_stream) serves every path: a row of a batch (serial), a single stream
 * whose steps are split over the helper pool (sarnn.c), and sarnn_step (len = 1). Split
 * protocol, for a step with n attended positions cut into nch chunks:
 *   - the leader (the calling thread) runs the update, writes the step descriptor (qv,
 *     first, n, raw-score scratch) into its job, then publishes the pool's claim word
 *     (seq << 32 | nch << 16 | 0, seq unique per step in the process) and wakes sleeping
 *     helpers;
 *   - any thread claims chunk j by advancing the claim word (helpers by compare-and-swap
 *     against the word they read, so a helper never claims a chunk of another step), and
 *     folds chunk j into its slot (acc_j, m_j, l_j, started_j); helpers count done;
 *   - the leader claims until none is left, so it never waits for a helper that has not
 *     started the step; it waits only for chunks a helper claimed and has not finished;
 *   - guard: if that wait exceeds stall_ns, the leader abandons the split for the rest of
 *     the call (claim word 0: nothing claimable) and recomputes the step serially in its own
 *     buffers; the late helper writes only its slot and the scratch, which nobody reads
 *     again. A per-thread chooser (sarnn.c) measures split and serial steps and runs the
 *     faster, probing the other now and then.
 * The leader never joins the helpers: at the end of a call it closes the claim word and
 * waits only while a helper is inside a chunk (pool inflight count), so a descheduled idle
 * helper costs nothing. A helper touches the job only between a successful claim and its
 * done count, so it never reads a finished call's buffers. */

/* Everything the step loop needs for one stream. */
typedef struct {
    const sarnn_model *m;
    const SFX(phases) *ph;
    REAL *hist, *keys, *hs, *cs;
    int64_t *pos_io;
    const REAL *x;
    int64_t len;
    REAL *out_h, *out_c, *attn;
    int64_t attn_cols;
    int compact;
    REAL *q, *acc;               /* serial scratch: qdim and H values */
} SFX(stream);

/* The job a split call gives the helper pool: the stream, the published step's descriptor,
 * and one partial softmax slot per chunk. */
typedef struct {
    const SFX(stream) *st;
    int64_t step;                /* the published step, 0-based within the call */
    const REAL *qv;
    int64_t first, n;
    REAL *e_raw;                 /* n raw scores of the step, or NULL (no attention output) */
    REAL *acc, *mx, *l;          /* per chunk: H accumulators, running max, sum */
    int *started;
    int max_chunks;
    split_params prm;
} SFX(team);

/* Chunk j of nch of the published step into slot j (any thread). */
static void SFX(run_chunk)(void *job, int64_t j, int64_t nch)
{
    SFX(team) *tm = (SFX(team) *)job;
    const SFX(stream) *st = tm->st;
    const int64_t H = st->m->H, first = tm->first, n = tm->n;
    const int64_t lo = first + n * j / nch, hi = first + n * (j + 1) / nch - 1;
    REAL *a = tm->acc + j * H;
    for (int64_t k = 0; k < H; k++)
        a[k] = 0;
    tm->started[j] = 0;
    st->ph->attend(st->m, st->hist, st->keys, lo, hi, tm->qv, a, &tm->mx[j], &tm->l[j],
                   &tm->started[j], tm->e_raw ? tm->e_raw + (lo - first) : 0);
}

/* A helper's entry: the same, after the stall a test may inject. */
static void SFX(helper_chunk)(void *job, int64_t j, int64_t nch)
{
    test_stall_helper(((SFX(team) *)job)->step);
    SFX(run_chunk)(job, j, nch);
}

/* The leader's share of one split step. Returns 1 when the step's chunks are all in, 0 when
 * the wait for a helper stalled (the caller then recomputes the step serially). */
static int SFX(split_step)(SFX(team) *tm, int64_t r, const REAL *qv, int64_t first,
                           int64_t n, int64_t nch, sarnn_call_stats *stats)
{
    tm->step = r;
    tm->qv = qv;
    tm->first = first;
    tm->n = n;
    const uint64_t base = pool_publish(nch);
    test_let_helper_claim(r, base);
    int64_t mine = 0;
    for (;;) {
        const int64_t j = pool_take();
        if (j >= nch)
            break;
        SFX(run_chunk)(tm, j, nch);
        mine++;
    }
    const int64_t theirs = nch - mine;
    stats->steps_split++;
    if (theirs) {
        stats->steps_helped++;
        stats->chunks_by_helpers += theirs;
    }
    return pool_wait_done(theirs, tm->prm.stall_ns);
}

/* The step loop of SPEC section 1 for one stream, from *pos_io on, len steps. With a team,
 * a step with at least min_positions attended positions may be split into chunks (above):
 * per step the calling thread's chooser decides (per_step_choice), or always
 * (a one-token call, whose caller chose); after a stall, the rest of the call is serial.
 * Without a team every step runs serially on this thread. */
static void SFX(run_stream)(const SFX(stream) *st, SFX(team) *tm, int per_step_choice,
                            sarnn_call_stats *stats)
{
    const sarnn_model *m = st->m;
    const SFX(phases) *ph = st->ph;
    const int64_t H = m->H, W = m->window, pos0 = *st->pos_io;
    int split = tm != 0;
    ph->project(m, st->out_h, st->x, st->len);
    for (int64_t r = 0; r < st->len; r++) {
        const int64_t p = pos0 + r;
        const REAL *qv = ph->update(m, st->hist, st->keys, st->hs, st->cs, p,
                                    st->out_h + r * H, st->q);
        const int64_t first = (W && p - W + 1 > 0) ? p - W + 1 : 0;
        const int64_t n = p - first + 1;
        REAL *e_row = st->attn ? st->attn + r * st->attn_cols + (st->compact ? 0 : first) : 0;
        REAL *c_t = st->out_c + r * H;
        int64_t nch = 0;
        stats->steps++;
        if (split && n >= tm->prm.min_positions) {
            nch = n / tm->prm.chunk_min;
            if (nch > tm->max_chunks)
                nch = tm->max_chunks;
            if (nch < 2)
                nch = 0;
        }
        int mode = 0;   /* 1: split this step */
        if (nch) {
            mode = per_step_choice ? chooser_pick(&chooser_steps, &tm->prm) : 1;
            if (!mode && !chooser_steps.probing && stats->fallback_step < 0)
                stats->fallback_step = r;
        }
        const double t0 = nch && per_step_choice ? now_ns() : 0;
        if (mode) {
            if (SFX(split_step)(tm, r, qv, first, n, nch, stats)) {
                ph->finish(H, (int)nch, tm->acc, tm->mx, tm->l, tm->started, c_t, st->cs,
                           tm->e_raw, e_row, n);
                if (per_step_choice)
                    chooser_record(&chooser_steps, 1, now_ns() - t0, n);
                continue;
            }
            split = 0;                  /* stalled: this step and the rest serially */
            if (stats->fallback_step < 0)
                stats->fallback_step = r;
            chooser_stalled(per_step_choice ? &chooser_steps : &chooser_calls, &tm->prm,
                            now_ns() - t0, n);
        }
        REAL mx = 0, l = 0;
        int started = 0;
        for (int64_t k = 0; k < H; k++)
            st->acc[k] = 0;
        ph->attend(m, st->hist, st->keys, first, p, qv, st->acc, &mx, &l, &started, e_row);
        ph->finish(H, 1, st->acc, &mx, &l, &started, c_t, st->cs, e_row, e_row, n);
        if (nch && split && per_step_choice)
            chooser_record(&chooser_steps, 0, now_ns() - t0, n);
    }
    *st->pos_io = pos0 + st->len;
}

/* Row b of a batch (forward: lengths; step: active flags) as a stream with scratch work. */
static void SFX(run_row)(const sarnn_model *m, const SFX(phases) *ph, const sarnn_state *s,
                         const REAL *x, int64_t T, int64_t b, int64_t len, REAL *out_h,
                         REAL *out_c, REAL *attn, int64_t attn_cols, int compact, REAL *work,
                         sarnn_call_stats *stats)
{
    const int64_t H = m->H, cap = s->capacity, kd = key_dim(m);
    SFX(stream) st = {
        .m = m, .ph = ph,
        .hist = (REAL *)s->hist + b * cap * H,
        .keys = kd ? (REAL *)s->keys + b * cap * kd : 0,
        .hs = (REAL *)s->h + b * H, .cs = (REAL *)s->c + b * H,
        .pos_io = &s->positions[b],
        .x = x + b * T * m->D, .len = len,
        .out_h = out_h + b * T * H, .out_c = out_c + b * T * H,
        .attn = attn ? attn + b * T * attn_cols : 0, .attn_cols = attn_cols,
        .compact = compact,
        .q = work, .acc = work + query_dim(m)};
    SFX(run_stream)(&st, 0, 0, stats);
}

/* Runs a checked call. Every buffer is allocated before any row is touched, so ENOMEM
 * leaves state and outputs as they were. */
static int SFX(drive)(const sarnn_model *m, const sarnn_state *s, const REAL *x, int64_t batch,
                      int64_t T, const int64_t *lengths, const uint8_t *active, REAL *out_h,
                      REAL *out_c, REAL *attn, int64_t attn_cols, int compact,
                      int32_t num_threads, sarnn_call_stats *stats)
{
    const SFX(phases) *const tables[SARNN_NISAS] = {
        &SFX(phases_generic), &SFX(phases_avx2), &SFX(phases_avx512)};
    const SFX(phases) *ph = tables[sarnn_isa()];
    const split_params prm = current_split_params();     /* read once per call */
    const int64_t H = m->H;
    const size_t work_n = (size_t)(query_dim(m) + H);
    int nt = num_threads > 0 ? num_threads : sarnn_max_threads();
    const int64_t len0 = row_len(lengths, active, 0);
    int64_t most = batch == 1 ? s->positions[0] + len0 : 0;   /* most positions attended */
    if (m->window && m->window < most)
        most = m->window;
    /* One-token calls (sarnn_step) choose per call between the split and serial. */
    int one_token = 0, split_it = 0;
    double t_call = 0;
    if (batch == 1 && nt > 1 && len0 > 0 && most >= prm.min_positions &&
        most / prm.chunk_min >= 2) {
        one_token = len0 == 1;
        split_it = one_token ? chooser_pick(&chooser_calls, &prm) : 1;
        if (one_token) {
            t_call = now_ns();
            if (!split_it && !chooser_calls.probing)
                stats->fallback_step = 0;
        }
    }
    if (split_it && !pool_acquire(nt - 1))
        split_it = 0;                 /* the pool serves another call, or has no helper */
    if (split_it) {
        int max_chunks = SARNN_CHUNKS_PER_THREAD * nt;
        if (max_chunks > 0xffff)
            max_chunks = 0xffff;
        const size_t mc = (size_t)max_chunks;
        const size_t n_real = work_n + mc * (size_t)(H + 2) + (attn ? (size_t)most : 0);
        char *block = sarnn_alloc(n_real * sizeof(REAL) + mc * sizeof(int));
        if (!block) {
            pool_release();
            return SARNN_ENOMEM;
        }
        REAL *work = (REAL *)block;
        SFX(stream) st = {
            .m = m, .ph = ph, .hist = (REAL *)s->hist, .keys = (REAL *)s->keys,
            .hs = (REAL *)s->h, .cs = (REAL *)s->c, .pos_io = &s->positions[0], .x = x,
            .len = len0, .out_h = out_h, .out_c = out_c, .attn = attn,
            .attn_cols = attn_cols, .compact = compact, .q = work,
            .acc = work + query_dim(m)};
        SFX(team) tm = {.st = &st, .max_chunks = max_chunks, .prm = prm};
        tm.acc = work + work_n;
        tm.mx = tm.acc + mc * (size_t)H;
        tm.l = tm.mx + mc;
        tm.e_raw = attn ? tm.l + mc : 0;
        tm.started = (int *)(block + n_real * sizeof(REAL));
        pool_set_job(&tm, SFX(helper_chunk));
        SFX(run_stream)(&st, &tm, !one_token, stats);
        pool_release();               /* waits only for a helper inside a chunk */
        free(block);
        if (one_token && stats->fallback_step < 0)
            chooser_record(&chooser_calls, 1, now_ns() - t_call, most);
        return SARNN_OK;
    }
    if (nt > batch)
        nt = (int)batch;
    if (nt < 1)
        nt = 1;
    const size_t per_thread = ((work_n * sizeof(REAL) + 63) / 64) * 64;
    char *block = sarnn_alloc(per_thread * (size_t)nt);
    if (!block)
        return SARNN_ENOMEM;
    if (nt == 1) { /* one sequence or one thread: no parallel region at all */
        for (int64_t b = 0; b < batch; b++) {
            const int64_t len = row_len(lengths, active, b);
            if (len > 0)
                SFX(run_row)(m, ph, s, x, T, b, len, out_h, out_c, attn, attn_cols, compact,
                             (REAL *)block, stats);
        }
    } else {
        int64_t steps = 0;
#pragma omp parallel num_threads(nt) reduction(+ : steps)
        {
            REAL *work = (REAL *)(block + per_thread * (size_t)omp_get_thread_num());
            sarnn_call_stats mine = {0, 0, 0, 0, -1};
#pragma omp for schedule(dynamic, 1)
            for (int64_t b = 0; b < batch; b++) {
                const int64_t len = row_len(lengths, active, b);
                if (len > 0)
                    SFX(run_row)(m, ph, s, x, T, b, len, out_h, out_c, attn, attn_cols,
                                 compact, work, &mine);
            }
            steps += mine.steps;
        }
        stats->steps += steps;
    }
    free(block);
    if (one_token)
        chooser_record(&chooser_calls, 0, now_ns() - t_call, most);
    return SARNN_OK;
}
