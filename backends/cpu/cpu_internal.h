/* cpu_internal.h: what the files of the CPU backend share: the functions that fill its operation
 * table (one file per family of operations), OpenMP helpers that compile away in a serial build,
 * and the order-preserving float keys used by the routing selections. Not for use outside
 * backends/cpu. */
#ifndef ETM_CPU_INTERNAL_H
#define ETM_CPU_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "cpu_math.h"

#ifdef _OPENMP
#include <omp.h>
#define ETM_OMP_STR(x) #x
/* ETM_OMP(parallel for ...) expands to the OpenMP pragma, and to nothing in a serial build (so
 * -Wall stays quiet about unknown pragmas). */
#define ETM_OMP(args) _Pragma(ETM_OMP_STR(omp args))
static inline int cpu_max_threads(void) { return omp_get_max_threads(); }
static inline int cpu_thread_num(void) { return omp_get_thread_num(); }
static inline int cpu_team_size(void) { return omp_get_num_threads(); }
#else
#define ETM_OMP(args)
static inline int cpu_max_threads(void) { return 1; }
static inline int cpu_thread_num(void) { return 0; }
static inline int cpu_team_size(void) { return 1; }
#endif

/* Work below this many elements runs on one thread: a parallel region costs microseconds. The
 * results do not depend on it (every element is computed the same way on any thread). */
#define CPU_PAR_MIN 16384

/* Reductions over long vectors sum fixed blocks of this many elements, then the block partials in
 * block order, so the rounding never depends on the thread count. */
#define CPU_REDUCE_BLOCK 8192

/* ---- scratch memory kept between calls (cpu_backend.c) ------------------------------------
 * Large temporary buffers (attention's per-thread blocks of scores) live in the backend's
 * context and are reused, grown as needed, instead of being allocated per call: fresh pages
 * fault and are zeroed by the kernel, which can cost more than the work done on them. One
 * buffer per slot; operations are called from serial code, so slots need no locking. */
enum {
    CPU_SCRATCH_ATT_ROWS, /* attention: per-thread blocks of scores and gathered rows */
    CPU_SCRATCH_SLOTS
};
/* At least bytes of 64-byte aligned memory for slot (contents undefined), valid until the next
 * request for the same slot or the backend's destruction. Call from serial code. */
void *cpu_scratch(etm_backend *be, int slot, size_t bytes);

/* Calls cblas_sgemm so that the BLAS runs on the calling thread alone. Must be called from inside
 * an OpenMP parallel region (any team size); see cpu_gemm.c for why. */
void cpu_sgemm_1thread(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                       int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* An unsigned key whose order is the order of the floats: larger float, larger key. -0 and +0
 * share a key (they compare equal); every NaN maps to key 0, below -infinity, so NaN scores are
 * never preferred and the order stays total. */
static inline uint32_t cpu_float_key(float x) {
    if (x != x) return 0;
    x += 0.0f; /* -0 -> +0 */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The float of a key (NaN for key 0). */
static inline float cpu_key_float(uint32_t key) {
    uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* cap * tanh(x / cap), the soft cap of the logits (cap > 0, inv_cap = 1 / cap), shared by softcap
 * and xent so both round alike. */
static inline float cpu_softcap1(float x, float cap, float inv_cap) {
    return cap * cpu_tanhf(x * inv_cap);
}

/* The k-th largest (k >= 1, k <= n) of keys[0..n); keys is reordered, tmp holds n keys. */
uint32_t cpu_kth_largest_key(uint32_t *keys, uint32_t *tmp, int n, int k);

/* ---- vectorised row loops (cpu_vector.c); outputs may be the inputs ---------------------- */
float cpu_vmax(const float *x, int n);                          /* -infinity when n == 0 */
void cpu_vexp(float *e, const float *x, float shift, int n);    /* e = exp(x - shift) */
double cpu_vexp_sum(float *e, const float *x, float shift, int n); /* the same; returns cpu_sum(e) */
void cpu_vsoftcap(float *z, const float *x, float cap, int n);  /* z = cap tanh(x / cap) */
void cpu_vsigmoid(float *out, const float *x, int n);           /* 1 / (1 + exp(-x)) */
/* d = dloss (d inv_sum) (1 - (z / cap)^2), the soft-capped cross-entropy gradient from
 * d = exp(z - max) (without the cap factor when cap <= 0) */
void cpu_vxent_grad(float *d, const float *z, float inv_sum, float cap, float dloss, int n);
/* p = exp(p - lse); dp = p (dp - di): attention's probabilities and dS from scores and dP */
void cpu_vattention_ds(float *p, float *dp, float lse, float di, int n);

/* ---- the operations, one family per file ------------------------------------------------- */
/* cpu_gemm.c */
void cpu_gemm(etm_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void cpu_gemm_grouped(etm_backend *be, int trans_a, int trans_b, int count,
                      const etm_gemm_group *groups, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
void cpu_syrk_batched(etm_backend *be, int trans, int count, int n, int k, float alpha,
                      const float *A, int lda, size_t a_stride, float beta, float *C, int ldc,
                      size_t c_stride);

/* cpu_elementwise.c */
void cpu_fill(etm_backend *be, float *x, float value, size_t n);
void cpu_scale(etm_backend *be, float *x, float a, size_t n);
void cpu_axpy(etm_backend *be, float *y, float a, const float *x, size_t n);
double cpu_sum_squares(etm_backend *be, const float *x, size_t n);
void cpu_column_sum(etm_backend *be, float *out, const float *in, int N, int E);
void cpu_add_row_vector(etm_backend *be, float *y, const float *v, int N, int E);
void cpu_add_scaled_rows(etm_backend *be, float *y, const float *a, const float *x, int N, int E);
void cpu_relu2_forward(etm_backend *be, float *out, const float *x, size_t n);
void cpu_relu2_backward(etm_backend *be, float *dx, const float *dout, const float *x, size_t n);
void cpu_sigmoid_forward(etm_backend *be, float *out, const float *x, size_t n);
void cpu_sigmoid_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                          size_t n);
void cpu_softcap(etm_backend *be, float *out, const float *x, size_t n, float cap);
void cpu_adamw_update(etm_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                      float lr, float b1, float b2, float eps, float wd, float bc1, float bc2);

/* cpu_layers.c */
void cpu_embedding_forward(etm_backend *be, float *out, const float *wte, const int32_t *tokens,
                           int N, int D);
void cpu_embedding_backward(etm_backend *be, float *dwte, const float *dout, const int32_t *tokens,
                            int N, int D, int V);
void cpu_rmsnorm_forward(etm_backend *be, float *out, float *rstd, const float *x, int N, int C,
                         float eps);
void cpu_rmsnorm_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                          const float *rstd, int N, int C);
void cpu_rope_forward(etm_backend *be, float *x, const float *cos_t, const float *sin_t, int B,
                      int T, int H, int hd, int pos0);
void cpu_rope_backward(etm_backend *be, float *dx, const float *cos_t, const float *sin_t, int B,
                       int T, int H, int hd, int pos0);

/* cpu_gates.c */
void cpu_gate_forward(etm_backend *be, etm_gate_op op, float *out, float *anchor, const float *x,
                      int N, int E);
void cpu_gate_backward(etm_backend *be, etm_gate_op op, float *dx, const float *dout,
                       const float *danchor, const float *out, const float *anchor, int N, int E);
void cpu_rows_dot(etm_backend *be, float *out, const float *a, const float *b, int N, int D);

/* cpu_softmax.c */
void cpu_softmax_forward(etm_backend *be, float *out, const float *x, int N, int E);
void cpu_softmax_backward(etm_backend *be, float *dx, const float *dout, const float *out, int N,
                          int E);
void cpu_logsumexp_rows(etm_backend *be, float *out, const float *x, int N, int E);
void cpu_xent_forward(etm_backend *be, float *losses, const float *logits, const int32_t *targets,
                      int N, int V, float cap);
void cpu_xent_backward(etm_backend *be, float *dlogits, const float *logits, const int32_t *targets,
                       int N, int V, float cap, float dloss);

/* cpu_attention.c */
void cpu_attention_forward(etm_backend *be, float *out, float *lse, const float *q, const float *k,
                           const float *v, int B, int T, int S, int H, int Hkv, int hd);
void cpu_attention_backward(etm_backend *be, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, const float *out,
                            const float *lse, int B, int T, int S, int H, int Hkv, int hd);

/* cpu_routing.c */
void cpu_topk_rows(etm_backend *be, uint8_t *z, const float *score, int N, int E, int k);
void cpu_select_columns(etm_backend *be, uint8_t *z, const float *score, const uint8_t *eligible,
                        const float *threshold, int N, int E, int pool_rows, int lo, int hi);
void cpu_kth_largest_columns(etm_backend *be, float *out, const float *score, int N, int E,
                             int pool_rows, int k);

/* cpu_dispatch.c */
void cpu_dispatch_alloc(etm_backend *be, etm_dispatch *d, int N, int E);
void cpu_dispatch_free(etm_backend *be, etm_dispatch *d);
void cpu_build_dispatch(etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E);
void cpu_gather_rows(etm_backend *be, float *dst, const float *src, const int32_t *pair_token,
                     int P, int D);
void cpu_scatter_add_rows(etm_backend *be, float *dst, const float *src, const etm_dispatch *d,
                          int D);
void cpu_gather_pairs(etm_backend *be, float *out, const float *x, const etm_dispatch *d);
void cpu_scatter_add_pairs(etm_backend *be, float *dx, const float *dpair, const etm_dispatch *d);
void cpu_combine_forward(etm_backend *be, float *y, const float *ye, const float *gate,
                         const etm_dispatch *d, int D);
void cpu_combine_backward(etm_backend *be, float *dye, float *dgate, const float *dy,
                          const float *ye, const float *gate, const etm_dispatch *d, int D);

#endif
