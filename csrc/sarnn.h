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
 *            out_attn (batch, T, attn_cols) or NULL.
 *   step:    x (batch, D), active (batch) uint8, out_h / out_c (batch, H).
 * Every entry point checks its arguments and returns 0 or an error code that
 * sarnn_error_message() explains; on error nothing has been written.
 */

typedef struct {
    int64_t D, H, Ha;
    int32_t score;       /* 0 dot, 1 scaled_dot, 2 general, 3 kq, 4 additive */
    int32_t recurrence;  /* 0 "c", 1 "hc" */
    int32_t dtype;       /* 0 float32, 1 float64 */
    int64_t window;      /* 0: attend over the whole history */
    const void *W_x, *W_c, *b, *W_h, *W_s, *W_k, *W_q, *v;
} sarnn_model;

typedef struct {
    int64_t batch, capacity;
    void *hist, *keys, *h, *c;
    int64_t *positions;
} sarnn_state;

int sarnn_forward(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
                  int64_t T, const int64_t *lengths, void *out_h, void *out_c, void *out_attn,
                  int64_t attn_cols, int32_t num_threads);

int sarnn_step(const sarnn_model *m, const sarnn_state *s, const void *x, int64_t batch,
               const uint8_t *active, void *out_h, void *out_c, int32_t num_threads);

const char *sarnn_error_message(int code);

int sarnn_isa(void);
int sarnn_force_generic(int on);
int sarnn_sanitized(void);
int sarnn_max_threads(void);
int64_t sarnn_set_split_min(int64_t n);
