/* sarnn_phases.h: one ISA variant of the kernel's phases, included by sarnn.c once per
 * dtype and instruction set. The includer defines REAL, SFX(name) (as for sarnn_kernel.h),
 * ISA_SFX(name) (name##_<isa>_<dtype>) and ISA_ATTR (the function attribute that selects
 * the target, empty for baseline x86-64). Each wrapper inlines the always_inline kernel
 * helpers, so the whole phase is compiled for that target. */

ISA_ATTR static void ISA_SFX(project)(const sarnn_model *m, REAL *out_h, const REAL *x,
                                      int64_t len)
{
    SFX(project)(out_h, (const REAL *)m->W_x, (const REAL *)m->b, x, len, m->H, m->D);
}

ISA_ATTR static const REAL *ISA_SFX(update)(const sarnn_model *m, REAL *hist, REAL *keys,
                                            REAL *hs, const REAL *cs, int64_t p, REAL *h_t,
                                            REAL *q)
{
    return SFX(step_update)(m, hist, keys, hs, cs, p, h_t, q);
}

ISA_ATTR static void ISA_SFX(attend)(const sarnn_model *m, const REAL *hist, const REAL *keys,
                                     int64_t lo, int64_t hi, const REAL *qv, REAL *acc,
                                     REAL *mx, REAL *l, int *started, REAL *e_out)
{
    SFX(attend_positions)(m, hist, keys, lo, hi, qv, acc, mx, l, started, e_out);
}

ISA_ATTR static void ISA_SFX(finish)(int64_t H, int parts, REAL *acc, const REAL *mx,
                                     const REAL *l, const int *started, REAL *c_t, REAL *cs,
                                     const REAL *e_raw, REAL *e_row, int64_t n)
{
    SFX(finish_step)(H, parts, acc, mx, l, started, c_t, cs, e_raw, e_row, n);
}

static const SFX(phases) ISA_SFX(phases) = {
    ISA_SFX(project), ISA_SFX(update), ISA_SFX(attend), ISA_SFX(finish)};
