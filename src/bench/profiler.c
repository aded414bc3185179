/* profiler.c: the measuring backend of profiler.h. Each operation of backends/backend.h's list
 * has a wrapper prof_<name> here, installed by the list itself (profiler_create), so an operation
 * added to the list without a wrapper does not compile. */
#include <config.h>

#include "profiler.h"

#include <stdlib.h>
#include <string.h>

/* [gemm or grouped][2 trans_a + trans_b] */
static const char *const gemm_kind_names[2][4] = {
    {"  gemm nn (x W)", "  gemm nt (x W^T)", "  gemm tn (A^T B)", "  gemm tt"},
    {"  grouped nn", "  grouped nt", "  grouped tn", "  grouped tt"}};

typedef struct {
    double seconds[ETM_BACKEND_N_OPS]; /* time in each operation (ETM_OP_TIMED only) */
    double calls[ETM_BACKEND_N_OPS];   /* calls of each operation */
    double kind_s[2][4], kind_flops[2][4]; /* [gemm, grouped][2 trans_a + trans_b] */
} phase_timers;

struct etm_profiler {
    etm_backend table; /* first: a copy of the real table with the entries replaced */
    etm_backend *orig; /* the real backend */
    int phase;         /* etm_bench_phase the records go to */
    phase_timers t[ETM_BENCH_PHASES];
};

/* An operation finds its profiler from the be pointer it is given (the table comes first). */
#define PROF_BEGIN(op)                                                                             \
    etm_profiler *pr = (etm_profiler *)be;                                                         \
    phase_timers *tm = &pr->t[pr->phase];                                                          \
    double t0_ = etm_now()
#define PROF_END(op)                                                                               \
    pr->orig->synchronize(pr->orig);                                                               \
    double dt_ = etm_now() - t0_;                                                                  \
    tm->seconds[ETM_OPI_##op] += dt_;                                                              \
    tm->calls[ETM_OPI_##op] += 1.0
#define WRAP(op, PARAMS, ARGS)                                                                     \
    static void prof_##op PARAMS {                                                                 \
        PROF_BEGIN(op);                                                                            \
        pr->orig->op ARGS;                                                                         \
        PROF_END(op);                                                                              \
        (void)dt_;                                                                                 \
    }
/* Memory management and synchronisation (ETM_OP_MEMORY): counted, passed through untimed. */
#define COUNT(op, PARAMS, ARGS)                                                                    \
    static void prof_##op PARAMS {                                                                 \
        etm_profiler *pr = (etm_profiler *)be;                                                     \
        pr->t[pr->phase].calls[ETM_OPI_##op] += 1.0;                                               \
        pr->orig->op ARGS;                                                                         \
    }

static void *prof_alloc(etm_backend *be, size_t bytes) {
    etm_profiler *pr = (etm_profiler *)be;
    pr->t[pr->phase].calls[ETM_OPI_alloc] += 1.0;
    return pr->orig->alloc(pr->orig, bytes);
}
COUNT(free, (etm_backend *be, void *p), (pr->orig, p))
COUNT(synchronize, (etm_backend *be), (pr->orig))
COUNT(dispatch_alloc, (etm_backend *be, etm_dispatch *d, int N, int E), (pr->orig, d, N, E))
COUNT(dispatch_free, (etm_backend *be, etm_dispatch *d), (pr->orig, d))

static void prof_gemm(etm_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc) {
    PROF_BEGIN(gemm);
    pr->orig->gemm(pr->orig, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    PROF_END(gemm);
    tm->kind_s[0][2 * !!ta + !!tb] += dt_;
    tm->kind_flops[0][2 * !!ta + !!tb] += 2.0 * M * N * K;
}

static void prof_gemm_grouped(etm_backend *be, int ta, int tb, int count, const etm_gemm_group *g,
                              float alpha, const float *A, int lda, const float *B, int ldb,
                              float beta, float *C, int ldc) {
    PROF_BEGIN(gemm_grouped);
    pr->orig->gemm_grouped(pr->orig, ta, tb, count, g, alpha, A, lda, B, ldb, beta, C, ldc);
    PROF_END(gemm_grouped);
    double f = 0.0;
    for (int i = 0; i < count; i++) f += 2.0 * g[i].M * g[i].N * g[i].K;
    tm->kind_s[1][2 * !!ta + !!tb] += dt_;
    tm->kind_flops[1][2 * !!ta + !!tb] += f;
}

static double prof_sum_squares(etm_backend *be, const float *x, size_t n) {
    PROF_BEGIN(sum_squares);
    double s = pr->orig->sum_squares(pr->orig, x, n);
    PROF_END(sum_squares);
    (void)dt_;
    return s;
}

WRAP(syrk_batched,
     (etm_backend *be, int trans, int count, int n, int k, float alpha, const float *A, int lda,
      size_t sa, float beta, float *C, int ldc, size_t sc),
     (pr->orig, trans, count, n, k, alpha, A, lda, sa, beta, C, ldc, sc))
WRAP(upload, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(download, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(copy, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(zero, (etm_backend *be, void *p, size_t n), (pr->orig, p, n))
WRAP(fill, (etm_backend *be, float *x, float v, size_t n), (pr->orig, x, v, n))
WRAP(scale, (etm_backend *be, float *x, float a, size_t n), (pr->orig, x, a, n))
WRAP(axpy, (etm_backend *be, float *y, float a, const float *x, size_t n), (pr->orig, y, a, x, n))
WRAP(column_sum, (etm_backend *be, float *o, const float *in, int N, int E), (pr->orig, o, in, N, E))
WRAP(add_row_vector, (etm_backend *be, float *y, const float *v, int N, int E),
     (pr->orig, y, v, N, E))
WRAP(add_scaled_rows, (etm_backend *be, float *y, const float *a, const float *x, int N, int E),
     (pr->orig, y, a, x, N, E))
WRAP(embedding_forward, (etm_backend *be, float *o, const float *w, const int32_t *t, int N, int D),
     (pr->orig, o, w, t, N, D))
WRAP(embedding_backward,
     (etm_backend *be, float *dw, const float *d, const int32_t *t, int N, int D, int V),
     (pr->orig, dw, d, t, N, D, V))
WRAP(rmsnorm_forward, (etm_backend *be, float *o, float *r, const float *x, int N, int C, float eps),
     (pr->orig, o, r, x, N, C, eps))
WRAP(rmsnorm_backward,
     (etm_backend *be, float *dx, const float *d, const float *o, const float *r, int N, int C),
     (pr->orig, dx, d, o, r, N, C))
WRAP(rope_forward,
     (etm_backend *be, float *x, const float *c, const float *s, int B, int T, int H, int hd, int p0),
     (pr->orig, x, c, s, B, T, H, hd, p0))
WRAP(rope_backward,
     (etm_backend *be, float *x, const float *c, const float *s, int B, int T, int H, int hd, int p0),
     (pr->orig, x, c, s, B, T, H, hd, p0))
WRAP(attention_forward,
     (etm_backend *be, float *o, float *l, const float *q, const float *k, const float *v, int B,
      int T, int S, int H, int Hkv, int hd),
     (pr->orig, o, l, q, k, v, B, T, S, H, Hkv, hd))
WRAP(attention_backward,
     (etm_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
      const float *k, const float *v, const float *o, const float *l, int B, int T, int S, int H,
      int Hkv, int hd),
     (pr->orig, dq, dk, dv, dout, q, k, v, o, l, B, T, S, H, Hkv, hd))
WRAP(relu2_forward, (etm_backend *be, float *o, const float *x, size_t n), (pr->orig, o, x, n))
WRAP(relu2_backward, (etm_backend *be, float *dx, const float *d, const float *x, size_t n),
     (pr->orig, dx, d, x, n))
WRAP(softcap, (etm_backend *be, float *o, const float *x, size_t n, float cap),
     (pr->orig, o, x, n, cap))
WRAP(xent_forward,
     (etm_backend *be, float *l, const float *lg, const int32_t *t, int N, int V, float cap),
     (pr->orig, l, lg, t, N, V, cap))
WRAP(xent_backward,
     (etm_backend *be, float *d, const float *lg, const int32_t *t, int N, int V, float cap,
      float dl),
     (pr->orig, d, lg, t, N, V, cap, dl))
WRAP(sigmoid_forward, (etm_backend *be, float *o, const float *x, size_t n), (pr->orig, o, x, n))
WRAP(sigmoid_backward, (etm_backend *be, float *dx, const float *d, const float *o, size_t n),
     (pr->orig, dx, d, o, n))
WRAP(softmax_forward, (etm_backend *be, float *o, const float *x, int N, int E),
     (pr->orig, o, x, N, E))
WRAP(softmax_backward,
     (etm_backend *be, float *dx, const float *d, const float *o, int N, int E),
     (pr->orig, dx, d, o, N, E))
WRAP(logsumexp_rows, (etm_backend *be, float *o, const float *x, int N, int E),
     (pr->orig, o, x, N, E))
WRAP(gate_forward,
     (etm_backend *be, etm_gate_op op, float *o, float *an, const float *x, int N, int E),
     (pr->orig, op, o, an, x, N, E))
WRAP(gate_backward,
     (etm_backend *be, etm_gate_op op, float *dx, const float *d, const float *da, const float *o,
      const float *an, int N, int E),
     (pr->orig, op, dx, d, da, o, an, N, E))
WRAP(rows_dot, (etm_backend *be, float *o, const float *a, const float *b, int N, int D),
     (pr->orig, o, a, b, N, D))
WRAP(topk_rows, (etm_backend *be, uint8_t *z, const float *s, int N, int E, int k),
     (pr->orig, z, s, N, E, k))
WRAP(select_columns,
     (etm_backend *be, uint8_t *z, const float *sc, const uint8_t *el, const float *th, int N,
      int E, int pool, int lo, int hi),
     (pr->orig, z, sc, el, th, N, E, pool, lo, hi))
WRAP(kth_largest_columns,
     (etm_backend *be, float *o, const float *sc, int N, int E, int pool, int k),
     (pr->orig, o, sc, N, E, pool, k))
WRAP(build_dispatch, (etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E),
     (pr->orig, d, z, N, E))
WRAP(gather_rows, (etm_backend *be, float *d, const float *s, const int32_t *pt, int P, int D),
     (pr->orig, d, s, pt, P, D))
WRAP(scatter_add_rows, (etm_backend *be, float *d, const float *s, const etm_dispatch *di, int D),
     (pr->orig, d, s, di, D))
WRAP(gather_pairs, (etm_backend *be, float *o, const float *x, const etm_dispatch *d),
     (pr->orig, o, x, d))
WRAP(scatter_add_pairs, (etm_backend *be, float *dx, const float *dp, const etm_dispatch *d),
     (pr->orig, dx, dp, d))
WRAP(combine_forward,
     (etm_backend *be, float *y, const float *ye, const float *g, const etm_dispatch *d, int D),
     (pr->orig, y, ye, g, d, D))
WRAP(combine_backward,
     (etm_backend *be, float *dye, float *dg, const float *dy, const float *ye, const float *g,
      const etm_dispatch *d, int D),
     (pr->orig, dye, dg, dy, ye, g, d, D))
WRAP(adamw_update,
     (etm_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
      float b2, float eps, float wd, float bc1, float bc2),
     (pr->orig, p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2))

etm_profiler *etm_profiler_create(etm_backend *orig) {
    etm_profiler *pr = etm_calloc(1, sizeof *pr);
    pr->table = *orig; /* name, ctx and destroy (ETM_OP_LIFETIME) pass through */
    pr->orig = orig;
#define PROF_SET_ETM_OP_LIFETIME(name)
#define PROF_SET_ETM_OP_MEMORY(name) pr->table.name = prof_##name;
#define PROF_SET_ETM_OP_TIMED(name) pr->table.name = prof_##name;
#define PROF_SET(name, kind) PROF_SET_##kind(name)
    ETM_BACKEND_OPS(PROF_SET)
#undef PROF_SET
    return pr;
}

void etm_profiler_free(etm_profiler *pr) { free(pr); }

etm_backend *etm_profiler_backend(etm_profiler *pr) { return &pr->table; }

void etm_profiler_set_phase(etm_profiler *pr, int phase) { pr->phase = phase; }

void etm_profiler_reset(etm_profiler *pr) { memset(pr->t, 0, sizeof pr->t); }

double etm_profiler_calls(const etm_profiler *pr, int phase, int op) {
    if (phase < 0 || phase >= ETM_BENCH_PHASES || op < 0 || op >= ETM_BACKEND_N_OPS) return 0.0;
    return pr->t[phase].calls[op];
}

/* One timed operation's entry, followed by its split by transposes when it is a matrix product. */
static void fill_op(etm_bench_profile *out, const phase_timers *t, int i, int steps) {
    if (t->calls[i] == 0.0 || etm_backend_op_kind(i) != ETM_OP_TIMED) return;
    out->ops_s += t->seconds[i] / steps;
    if (out->n_ops < ETM_BENCH_MAX_OPS)
        out->ops[out->n_ops++] = (etm_bench_op){etm_backend_op_name(i), t->calls[i] / steps,
                                                t->seconds[i] / steps, 0.0};
    if (i != ETM_OPI_gemm && i != ETM_OPI_gemm_grouped) return;
    int g = i == ETM_OPI_gemm ? 0 : 1;
    double flops = 0.0;
    for (int k = 0; k < 4; k++) flops += t->kind_flops[g][k];
    out->ops[out->n_ops - 1].gflop = flops / steps * 1e-9;
    for (int k = 0; k < 4; k++)
        if (t->kind_flops[g][k] > 0.0 && out->n_ops < ETM_BENCH_MAX_OPS)
            out->ops[out->n_ops++] = (etm_bench_op){gemm_kind_names[g][k], 0.0,
                                                    t->kind_s[g][k] / steps,
                                                    t->kind_flops[g][k] / steps * 1e-9};
}

void etm_profiler_fill(const etm_profiler *pr, int phase, double step_s, int steps,
                       etm_bench_profile *out) {
    const phase_timers *t = &pr->t[phase];
    memset(out, 0, sizeof *out);
    out->step_s = step_s;
    fill_op(out, t, ETM_OPI_gemm, steps);
    fill_op(out, t, ETM_OPI_gemm_grouped, steps);
    for (int i = 0; i < ETM_BACKEND_N_OPS; i++)
        if (i != ETM_OPI_gemm && i != ETM_OPI_gemm_grouped) fill_op(out, t, i, steps);
}
