/* compare_ops_case.h: one case of the op-by-op comparison (compare_ops.h) and what its files share:
 * tolerances, the comparison's state, the named outputs of one case, the helpers that move test
 * data to and from a backend, and one etm_cmp_<family> function per family of operations.
 *
 * Each op has an argument struct holding host inputs, a run function that uploads them to one
 * backend, runs the op, and downloads every output into one float buffer (masks and indices as
 * exact small floats), and a test function that draws the inputs and names the outputs (parts)
 * with their tolerances. etm_cmp_case runs the op on the reference once and on the tested
 * backend twice, and judges each part. */
#ifndef ETM_COMPARE_OPS_CASE_H
#define ETM_COMPARE_OPS_CASE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rng.h"

#define EXACT (-1.0)    /* tolerance meaning "bit-identical" */
#define TOL_ROUND 1e-12 /* same arithmetic, possibly a different rounding or summation order */
#define TOL_LIBM 1e-10  /* exp/tanh/log from a different math library */
#define TOL_GEMM 1e-10  /* fp32 products of up to ~200 terms in another order */
#define TOL_ATTN 1e-9   /* online softmax and recomputed probabilities */
/* soft-capped cross-entropy: near the cap's flat ends 1 - tanh^2 cancels, magnifying the last-ulp
 * differences between math libraries' tanhf in the largest gradients */
#define TOL_XENT 1e-8
#define MAX_PARTS 8

typedef struct {
    etm_backend *ref, *test;
    etm_rng rng;
    FILE *report;
    int failures;
} chk;

typedef struct {
    const char *name; /* output name */
    size_t n;         /* floats in the output buffer */
    double tol;       /* normalised-error bound, or EXACT */
} part;

typedef void (*run_fn)(etm_backend *be, const void *args, float *out);

/* ---- helpers ------------------------------------------------------------------------------ */
static inline void *dput(etm_backend *be, const void *host, size_t bytes) {
    void *d = be->alloc(be, bytes ? bytes : sizeof(float));
    if (host && bytes) be->upload(be, d, host, bytes);
    return d;
}
static inline void dget(etm_backend *be, float *host, const void *dev, size_t n) {
    if (n) be->download(be, host, dev, n * sizeof(float));
}
static inline void dget_u8(etm_backend *be, float *host, const uint8_t *dev, size_t n) {
    uint8_t *tmp = etm_malloc(n ? n : 1);
    if (n) be->download(be, tmp, dev, n);
    for (size_t i = 0; i < n; i++) host[i] = (float)tmp[i];
    free(tmp);
}
static inline void dget_i32(etm_backend *be, float *host, const int32_t *dev, size_t n) {
    int32_t *tmp = etm_malloc((n ? n : 1) * sizeof(int32_t));
    if (n) be->download(be, tmp, dev, n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) host[i] = (float)tmp[i];
    free(tmp);
}
static inline float *h_normal(chk *c, size_t n, float std) {
    float *x = etm_malloc((n ? n : 1) * sizeof(float));
    etm_rng_fill_normal(&c->rng, x, n, std);
    return x;
}
static inline float *h_uniform(chk *c, size_t n, float lo, float hi) {
    float *x = etm_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * etm_rng_uniform(&c->rng);
    return x;
}
/* Scores with many exact ties: integers 0..levels-1 scaled. */
static inline float *h_tied(chk *c, size_t n, int levels) {
    float *x = etm_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = 0.25f * (float)etm_rng_below(&c->rng, (uint64_t)levels);
    return x;
}
static inline uint8_t *h_mask(chk *c, size_t n, float density) {
    uint8_t *z = etm_malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) z[i] = etm_rng_uniform(&c->rng) < density;
    return z;
}

/* The normalised error of compare_ops.h's etm_check_nmse (compare_ops_case.c). */
double etm_cmp_nmse(const float *ref, const float *test, size_t n);

/* The report's column titles (compare_ops_case.c). */
void etm_cmp_report_header(chk *c);

/* Runs fn on ref once and on test twice, then judges each part of the output (compare_ops_case.c). */
void etm_cmp_case(chk *c, const char *op, run_fn fn, const void *args, int n_parts,
                  const part *parts);

/* ---- the families of operations, each comparing every operation it names ------------------- */
/* compare_ops_math.c */
void etm_cmp_memory(chk *c);       /* alloc, free, upload, download, copy, zero, synchronize */
void etm_cmp_gemm(chk *c);         /* gemm, every transpose, padded leading dimensions */
void etm_cmp_gemm_grouped(chk *c); /* gemm_grouped, empty groups included */
void etm_cmp_syrk_batched(chk *c); /* syrk_batched, both transposes, padded strides */
void etm_cmp_vec(chk *c);          /* fill, scale, axpy, column_sum, add_row_vector, add_scaled_rows */
void etm_cmp_sum_squares(chk *c);  /* sum_squares */
void etm_cmp_adamw(chk *c);        /* adamw_update */
/* compare_ops_layers.c */
void etm_cmp_embedding(chk *c);    /* embedding_forward, embedding_backward */
void etm_cmp_rmsnorm(chk *c);      /* rmsnorm_forward, rmsnorm_backward */
void etm_cmp_rope(chk *c);         /* rope_forward, rope_backward */
void etm_cmp_attention(chk *c);    /* attention_forward, attention_backward */
void etm_cmp_act(chk *c);          /* relu2, sigmoid, softmax, gate ops (forward, backward), logsumexp_rows, rows_dot, softcap */
void etm_cmp_xent(chk *c);         /* xent_forward, xent_backward */
/* compare_ops_routing.c */
void etm_cmp_routing(chk *c, int N, int E, int pool, int k_target, const char *tag); /* topk_rows,
                                      select_columns, kth_largest_columns */
void etm_cmp_dispatch(chk *c, int N, int E, int D, const char *tag); /* dispatch_alloc, _free,
                                      build_dispatch, gather/scatter of rows and pairs, combine */

#endif
