/* backend_check.c: op-by-op comparison of two backends (see backend_check.h).
 *
 * Each op has an argument struct holding host inputs, a run function that uploads them to one
 * backend, runs the op, and downloads every output into one float buffer (masks and indices as
 * exact small floats), and a test function that draws the inputs and names the outputs (parts)
 * with their tolerances. check_case runs the op on the reference once and on the tested backend
 * twice, and judges each part. */
#include <config.h>

#include "backend_check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
static void *dput(etm_backend *be, const void *host, size_t bytes) {
    void *d = be->alloc(be, bytes ? bytes : sizeof(float));
    if (host && bytes) be->upload(be, d, host, bytes);
    return d;
}
static void dget(etm_backend *be, float *host, const void *dev, size_t n) {
    if (n) be->download(be, host, dev, n * sizeof(float));
}
static void dget_u8(etm_backend *be, float *host, const uint8_t *dev, size_t n) {
    uint8_t *tmp = etm_malloc(n ? n : 1);
    if (n) be->download(be, tmp, dev, n);
    for (size_t i = 0; i < n; i++) host[i] = (float)tmp[i];
    free(tmp);
}
static void dget_i32(etm_backend *be, float *host, const int32_t *dev, size_t n) {
    int32_t *tmp = etm_malloc((n ? n : 1) * sizeof(int32_t));
    if (n) be->download(be, tmp, dev, n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) host[i] = (float)tmp[i];
    free(tmp);
}
static float *h_normal(chk *c, size_t n, float std) {
    float *x = etm_malloc((n ? n : 1) * sizeof(float));
    etm_rng_fill_normal(&c->rng, x, n, std);
    return x;
}
static float *h_uniform(chk *c, size_t n, float lo, float hi) {
    float *x = etm_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * etm_rng_uniform(&c->rng);
    return x;
}
/* Scores with many exact ties: integers 0..levels-1 scaled. */
static float *h_tied(chk *c, size_t n, int levels) {
    float *x = etm_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = 0.25f * (float)etm_rng_below(&c->rng, (uint64_t)levels);
    return x;
}
static uint8_t *h_mask(chk *c, size_t n, float density) {
    uint8_t *z = etm_malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) z[i] = etm_rng_uniform(&c->rng) < density;
    return z;
}

double etm_check_nmse(const float *ref, const float *test, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(ref[i]) || !isfinite(test[i])) return INFINITY;
        double d = (double)test[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    if (num == 0.0) return 0.0;
    return num / (den > 1e-30 ? den : 1e-30);
}

static void report_header(chk *c) {
    if (c->report)
        fprintf(c->report, "%-46s %-12s %8s %12s %12s %9s %-7s %s\n", "op", "output", "n",
                "max_abs_err", "nmse", "tol", "repeat", "result");
}

static void judge(chk *c, const char *op, const part *p, const float *r, const float *t1,
                  const float *t2) {
    double max_abs = 0.0, nmse = etm_check_nmse(r, t1, p->n);
    int exact = memcmp(r, t1, p->n * sizeof(float)) == 0;
    int repeat = memcmp(t1, t2, p->n * sizeof(float)) == 0;
    int finite = 1;
    for (size_t i = 0; i < p->n; i++) {
        if (!isfinite(t1[i]) || !isfinite(r[i])) finite = 0;
        double d = fabs((double)t1[i] - (double)r[i]);
        if (d > max_abs || d != d) max_abs = d;
    }
    int ok = finite && repeat && (p->tol == EXACT ? exact : nmse <= p->tol);
    if (!ok) c->failures++;
    if (c->report) {
        char tol[16];
        if (p->tol == EXACT) snprintf(tol, sizeof tol, "exact");
        else snprintf(tol, sizeof tol, "%.0e", p->tol);
        fprintf(c->report, "%-46s %-12s %8zu %12.3e %12.3e %9s %-7s %s\n", op, p->name, p->n,
                max_abs, nmse, tol, repeat ? "same" : "DIFFERS",
                ok ? "ok" : (!finite ? "FAIL (NaN/inf)" : "FAIL"));
    }
}

/* Runs fn on ref once and on test twice, then judges each part of the output. */
static void check_case(chk *c, const char *op, run_fn fn, const void *args, int n_parts,
                       const part *parts) {
    size_t total = 0;
    for (int i = 0; i < n_parts; i++) total += parts[i].n;
    float *r = etm_calloc(total ? total : 1, sizeof(float));
    float *t1 = etm_calloc(total ? total : 1, sizeof(float));
    float *t2 = etm_calloc(total ? total : 1, sizeof(float));
    fn(c->ref, args, r);
    fn(c->test, args, t1);
    fn(c->test, args, t2);
    size_t off = 0;
    for (int i = 0; i < n_parts; i++) {
        judge(c, op, &parts[i], r + off, t1 + off, t2 + off);
        off += parts[i].n;
    }
    free(r);
    free(t1);
    free(t2);
}

/* ---- memory ------------------------------------------------------------------------------ */
typedef struct {
    const float *x;
    size_t n;
} memory_args;
static void run_memory(etm_backend *be, const void *va, float *out) {
    const memory_args *a = va;
    float *x = dput(be, a->x, a->n * sizeof(float));
    float *y = dput(be, NULL, a->n * sizeof(float));
    be->copy(be, y, x, a->n * sizeof(float));
    dget(be, out, y, a->n);
    be->zero(be, y + 3, (a->n - 6) * sizeof(float));
    dget(be, out + a->n, y, a->n);
    float *fresh = dput(be, NULL, a->n * sizeof(float)); /* alloc zero-fills */
    be->synchronize(be);
    dget(be, out + 2 * a->n, fresh, a->n);
    be->free(be, x);
    be->free(be, y);
    be->free(be, fresh);
}
static void test_memory(chk *c) {
    memory_args a = {h_normal(c, 101, 1.0f), 101};
    part p[] = {{"copy", 101, EXACT}, {"zero", 101, EXACT}, {"alloc", 101, EXACT}};
    check_case(c, "copy/zero/alloc", run_memory, &a, 3, p);
    free((void *)a.x);
}

/* ---- gemm --------------------------------------------------------------------------------- */
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B, *C;
    size_t a_n, b_n, c_n;
    int count;                   /* grouped: number of groups; 0: plain gemm */
    const etm_gemm_group *groups;
} gemm_args;
static void run_gemm(etm_backend *be, const void *va, float *out) {
    const gemm_args *a = va;
    float *A = dput(be, a->A, a->a_n * sizeof(float));
    float *B = dput(be, a->B, a->b_n * sizeof(float));
    float *C = dput(be, a->C, a->c_n * sizeof(float));
    if (a->count)
        be->gemm_grouped(be, a->ta, a->tb, a->count, a->groups, a->alpha, A, a->lda, B, a->ldb,
                         a->beta, C, a->ldc);
    else
        be->gemm(be, a->ta, a->tb, a->M, a->N, a->K, a->alpha, A, a->lda, B, a->ldb, a->beta, C,
                 a->ldc);
    dget(be, out, C, a->c_n);
    be->free(be, A);
    be->free(be, B);
    be->free(be, C);
}
static void test_gemm(chk *c) {
    static const char *names[2][2] = {{"gemm NN", "gemm NT"}, {"gemm TN", "gemm TT"}};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int M = 37, N = 29, K = 53;
            gemm_args a = {ta, tb, M, N, K, 0, 0, N + 3, 0.7f, 0.3f, NULL, NULL, NULL,
                           0, 0, 0, 0, NULL};
            int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
            a.lda = a_cols + 2;
            a.ldb = b_cols + 5;
            a.a_n = (size_t)a_rows * a.lda;
            a.b_n = (size_t)b_rows * a.ldb;
            a.c_n = (size_t)M * a.ldc;
            a.A = h_normal(c, a.a_n, 1.0f);
            a.B = h_normal(c, a.b_n, 1.0f);
            a.C = h_normal(c, a.c_n, 1.0f);
            part p = {"C", a.c_n, TOL_GEMM};
            check_case(c, names[ta][tb], run_gemm, &a, 1, &p);
            if (ta == 0 && tb == 0) {
                /* beta = 0 ignores C (even NaN there); K = 0 only scales C */
                float *cn = (float *)a.C;
                cn[5] = NAN;
                a.beta = 0.0f;
                check_case(c, "gemm NN beta=0 over NaN", run_gemm, &a, 1, &p);
                cn[5] = 1.5f;
                a.K = 0;
                a.beta = 0.5f;
                part p0 = {"C", a.c_n, EXACT};
                check_case(c, "gemm K=0 scales C", run_gemm, &a, 1, &p0);
            }
            free((void *)a.A);
            free((void *)a.B);
            free((void *)a.C);
        }
}
static void test_gemm_grouped(chk *c) {
    /* Expert forward: Y_e (P_e, Hx) = X_e (P_e, D) W_e^T, W (E, Hx, D); groups by row offsets,
     * one of them empty. */
    enum { E = 4, D = 19, Hx = 23 };
    int rows[E] = {7, 0, 12, 3}, P = 22;
    etm_gemm_group g[E];
    int r0 = 0;
    for (int e = 0; e < E; e++) {
        g[e].M = rows[e];
        g[e].N = Hx;
        g[e].K = D;
        g[e].a_off = (size_t)r0 * (D + 1);
        g[e].b_off = (size_t)e * Hx * (D + 1);
        g[e].c_off = (size_t)r0 * (Hx + 2);
        r0 += rows[e];
    }
    gemm_args a = {ETM_NO_TRANS, ETM_TRANS, 0, 0, 0, D + 1, D + 1, Hx + 2, 1.0f, 1.0f, NULL, NULL,
                   NULL, (size_t)P * (D + 1), (size_t)E * Hx * (D + 1), (size_t)P * (Hx + 2), E,
                   g};
    a.A = h_normal(c, a.a_n, 1.0f);
    a.B = h_normal(c, a.b_n, 1.0f);
    a.C = h_normal(c, a.c_n, 1.0f);
    part p = {"C", a.c_n, TOL_GEMM};
    check_case(c, "gemm_grouped NT", run_gemm, &a, 1, &p);
    free((void *)a.A);
    free((void *)a.B);
    free((void *)a.C);

    /* Weight gradient: dW_e (Hx, D) = beta dW_e + dH_e^T (Hx, P_e) X_e (P_e, D); an expert with
     * no tokens (K = 0) is only scaled by beta. */
    etm_gemm_group w[E];
    r0 = 0;
    for (int e = 0; e < E; e++) {
        w[e].M = Hx;
        w[e].N = D;
        w[e].K = rows[e];
        w[e].a_off = (size_t)r0 * Hx;
        w[e].b_off = (size_t)r0 * D;
        w[e].c_off = (size_t)e * Hx * D;
        r0 += rows[e];
    }
    gemm_args b = {ETM_TRANS, ETM_NO_TRANS, 0, 0, 0, Hx, D, D, 0.5f, 0.75f, NULL, NULL, NULL,
                   (size_t)P * Hx, (size_t)P * D, (size_t)E * Hx * D, E, w};
    b.A = h_normal(c, b.a_n, 1.0f);
    b.B = h_normal(c, b.b_n, 1.0f);
    b.C = h_normal(c, b.c_n, 1.0f);
    part q = {"C", b.c_n, TOL_GEMM};
    check_case(c, "gemm_grouped TN (K=0 group)", run_gemm, &b, 1, &q);
    free((void *)b.A);
    free((void *)b.B);
    free((void *)b.C);
}

/* ---- elementwise and reductions ----------------------------------------------------------- */
typedef struct {
    int op;
    const float *x, *y, *v;
    int N, E;
    float a;
} vec_args;
enum { V_FILL, V_SCALE, V_AXPY, V_COLSUM, V_ADDROW, V_ADDSCALED };
static void run_vec(etm_backend *be, const void *va, float *out) {
    const vec_args *a = va;
    size_t n = (size_t)a->N * a->E;
    float *x = dput(be, a->x, n * sizeof(float));
    float *y = dput(be, a->y, n * sizeof(float));
    float *v = dput(be, a->v, (size_t)(a->N > a->E ? a->N : a->E) * sizeof(float));
    switch (a->op) {
    case V_FILL: be->fill(be, y, a->a, n); dget(be, out, y, n); break;
    case V_SCALE: be->scale(be, y, a->a, n); dget(be, out, y, n); break;
    case V_AXPY: be->axpy(be, y, a->a, x, n); dget(be, out, y, n); break;
    case V_COLSUM:
        be->fill(be, v, NAN, (size_t)a->E); /* column_sum writes: old contents must not matter */
        be->column_sum(be, v, x, a->N, a->E);
        dget(be, out, v, (size_t)a->E);
        break;
    case V_ADDROW: be->add_row_vector(be, y, v, a->N, a->E); dget(be, out, y, n); break;
    default: be->add_scaled_rows(be, y, v, x, a->N, a->E); dget(be, out, y, n); break;
    }
    be->free(be, x);
    be->free(be, y);
    be->free(be, v);
}
static void test_vec(chk *c) {
    int N = 1037, E = 19;
    size_t n = (size_t)N * E;
    vec_args a = {0, h_normal(c, n, 1.0f), h_normal(c, n, 1.0f), h_normal(c, (size_t)N, 1.0f), N,
                  E, -0.37f};
    part full = {"y", n, EXACT}, col = {"out", (size_t)E, TOL_ROUND};
    a.op = V_FILL;
    check_case(c, "fill", run_vec, &a, 1, &full);
    a.op = V_SCALE;
    check_case(c, "scale", run_vec, &a, 1, &full);
    full.tol = TOL_ROUND;
    a.op = V_AXPY;
    check_case(c, "axpy", run_vec, &a, 1, &full);
    a.op = V_COLSUM;
    check_case(c, "column_sum", run_vec, &a, 1, &col);
    a.op = V_ADDROW;
    check_case(c, "add_row_vector", run_vec, &a, 1, &full);
    a.op = V_ADDSCALED;
    check_case(c, "add_scaled_rows", run_vec, &a, 1, &full);
    free((void *)a.x);
    free((void *)a.y);
    free((void *)a.v);
}

static void test_sum_squares(chk *c) {
    size_t sizes[] = {1, 100003};
    for (int s = 0; s < 2; s++) {
        size_t n = sizes[s];
        float *x = h_normal(c, n, 3.0f);
        double r, t1, t2;
        {
            float *d = dput(c->ref, x, n * sizeof(float));
            r = c->ref->sum_squares(c->ref, d, n);
            c->ref->free(c->ref, d);
        }
        {
            float *d = dput(c->test, x, n * sizeof(float));
            t1 = c->test->sum_squares(c->test, d, n);
            t2 = c->test->sum_squares(c->test, d, n);
            c->test->free(c->test, d);
        }
        double rel = fabs(t1 - r) / (fabs(r) > 1e-300 ? fabs(r) : 1e-300);
        int ok = isfinite(t1) && rel <= 1e-12 && t1 == t2;
        if (!ok) c->failures++;
        if (c->report)
            fprintf(c->report, "%-46s %-12s %8zu %12.3e %12.3e %9s %-7s %s\n",
                    s ? "sum_squares" : "sum_squares n=1", "sum (rel)", n, fabs(t1 - r), rel,
                    "1e-12", t1 == t2 ? "same" : "DIFFERS", ok ? "ok" : "FAIL");
        free(x);
    }
}

/* ---- embedding, RMSNorm, RoPE ------------------------------------------------------------- */
typedef struct {
    int backward;
    const float *wte, *dout, *dwte;
    const int32_t *tokens;
    int N, D, V;
} emb_args;
static void run_embedding(etm_backend *be, const void *va, float *out) {
    const emb_args *a = va;
    size_t nd = (size_t)a->N * a->D, vd = (size_t)a->V * a->D;
    int32_t *tok = dput(be, a->tokens, (size_t)a->N * sizeof(int32_t));
    if (!a->backward) {
        float *wte = dput(be, a->wte, vd * sizeof(float));
        float *o = dput(be, NULL, nd * sizeof(float));
        be->embedding_forward(be, o, wte, tok, a->N, a->D);
        dget(be, out, o, nd);
        be->free(be, wte);
        be->free(be, o);
    } else {
        float *dwte = dput(be, a->dwte, vd * sizeof(float));
        float *dout = dput(be, a->dout, nd * sizeof(float));
        be->embedding_backward(be, dwte, dout, tok, a->N, a->D, a->V);
        dget(be, out, dwte, vd);
        be->free(be, dwte);
        be->free(be, dout);
    }
    be->free(be, tok);
}
static void test_embedding(chk *c) {
    int N = 211, D = 37, V = 53; /* N > V: many repeated tokens */
    int32_t *tokens = etm_malloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)etm_rng_below(&c->rng, (uint64_t)V);
    tokens[0] = V - 1;
    emb_args a = {0, h_normal(c, (size_t)V * D, 1.0f), h_normal(c, (size_t)N * D, 1.0f),
                  h_normal(c, (size_t)V * D, 1.0f), tokens, N, D, V};
    part pf = {"out", (size_t)N * D, EXACT}, pb = {"dwte", (size_t)V * D, TOL_ROUND};
    check_case(c, "embedding_forward", run_embedding, &a, 1, &pf);
    a.backward = 1;
    check_case(c, "embedding_backward", run_embedding, &a, 1, &pb);
    free((void *)a.wte);
    free((void *)a.dout);
    free((void *)a.dwte);
    free(tokens);
}

typedef struct {
    const float *x, *dout, *dx;
    int N, C;
    float eps;
} rms_args;
static void run_rmsnorm(etm_backend *be, const void *va, float *out) {
    const rms_args *a = va;
    size_t n = (size_t)a->N * a->C;
    float *x = dput(be, a->x, n * sizeof(float));
    float *o = dput(be, NULL, n * sizeof(float));
    float *rstd = dput(be, NULL, (size_t)a->N * sizeof(float));
    float *dout = dput(be, a->dout, n * sizeof(float));
    float *dx = dput(be, a->dx, n * sizeof(float));
    be->rmsnorm_forward(be, o, rstd, x, a->N, a->C, a->eps);
    dget(be, out, o, n);
    dget(be, out + n, rstd, (size_t)a->N);
    be->rmsnorm_backward(be, dx, dout, o, rstd, a->N, a->C);
    dget(be, out + n + a->N, dx, n);
    be->free(be, x);
    be->free(be, o);
    be->free(be, rstd);
    be->free(be, dout);
    be->free(be, dx);
}
static void test_rmsnorm(chk *c) {
    int N = 29, C = 77;
    size_t n = (size_t)N * C;
    rms_args a = {h_normal(c, n, 2.0f), h_normal(c, n, 1.0f), h_normal(c, n, 1.0f), N, C, 1e-5f};
    part p[] = {{"out", n, TOL_LIBM}, {"rstd", (size_t)N, TOL_LIBM}, {"dx (+=)", n, TOL_LIBM}};
    check_case(c, "rmsnorm forward+backward", run_rmsnorm, &a, 3, p);
    free((void *)a.x);
    free((void *)a.dout);
    free((void *)a.dx);
}

typedef struct {
    const float *x, *cos_t, *sin_t;
    int B, T, H, hd, pos0, t_max;
} rope_args;
static void run_rope(etm_backend *be, const void *va, float *out) {
    const rope_args *a = va;
    size_t n = (size_t)a->B * a->T * a->H * a->hd, tn = (size_t)a->t_max * (a->hd / 2);
    float *x = dput(be, a->x, n * sizeof(float));
    float *ct = dput(be, a->cos_t, tn * sizeof(float));
    float *st = dput(be, a->sin_t, tn * sizeof(float));
    be->rope_forward(be, x, ct, st, a->B, a->T, a->H, a->hd, a->pos0);
    dget(be, out, x, n);
    be->rope_backward(be, x, ct, st, a->B, a->T, a->H, a->hd, a->pos0);
    dget(be, out + n, x, n);
    be->free(be, x);
    be->free(be, ct);
    be->free(be, st);
}
static void test_rope(chk *c) {
    int B = 2, T = 7, H = 3, hd = 10, pos0 = 5, t_max = 16;
    size_t n = (size_t)B * T * H * hd, tn = (size_t)t_max * (hd / 2);
    float *ct = etm_malloc(tn * sizeof(float)), *st = etm_malloc(tn * sizeof(float));
    for (size_t i = 0; i < tn; i++) {
        double angle = 6.283185307179586 * etm_rng_uniform(&c->rng);
        ct[i] = (float)cos(angle);
        st[i] = (float)sin(angle);
    }
    rope_args a = {h_normal(c, n, 1.0f), ct, st, B, T, H, hd, pos0, t_max};
    part p[] = {{"y", n, TOL_ROUND}, {"dx of y", n, TOL_ROUND}};
    check_case(c, "rope forward, backward", run_rope, &a, 2, p);
    free((void *)a.x);
    free(ct);
    free(st);
}

/* ---- attention ---------------------------------------------------------------------------- */
typedef struct {
    int backward;
    const float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
    int B, T, S, H, Hkv, hd;
} attn_args;
static void run_attention(etm_backend *be, const void *va, float *out) {
    const attn_args *a = va;
    size_t nq = (size_t)a->B * a->T * a->H * a->hd, nk = (size_t)a->B * a->S * a->Hkv * a->hd;
    size_t nl = (size_t)a->B * a->H * a->T;
    float *q = dput(be, a->q, nq * sizeof(float));
    float *k = dput(be, a->k, nk * sizeof(float));
    float *v = dput(be, a->v, nk * sizeof(float));
    if (!a->backward) {
        float *o = dput(be, NULL, nq * sizeof(float));
        float *lse = dput(be, NULL, nl * sizeof(float));
        be->attention_forward(be, o, lse, q, k, v, a->B, a->T, a->S, a->H, a->Hkv, a->hd);
        dget(be, out, o, nq);
        dget(be, out + nq, lse, nl);
        be->free(be, o);
        be->free(be, lse);
    } else {
        float *o = dput(be, a->out, nq * sizeof(float));
        float *lse = dput(be, a->lse, nl * sizeof(float));
        float *dout = dput(be, a->dout, nq * sizeof(float));
        float *dq = dput(be, a->dq, nq * sizeof(float));
        float *dk = dput(be, a->dk, nk * sizeof(float));
        float *dv = dput(be, a->dv, nk * sizeof(float));
        be->attention_backward(be, dq, dk, dv, dout, q, k, v, o, lse, a->B, a->T, a->S, a->H,
                               a->Hkv, a->hd);
        dget(be, out, dq, nq);
        dget(be, out + nq, dk, nk);
        dget(be, out + nq + nk, dv, nk);
        be->free(be, o);
        be->free(be, lse);
        be->free(be, dout);
        be->free(be, dq);
        be->free(be, dk);
        be->free(be, dv);
    }
    be->free(be, q);
    be->free(be, k);
    be->free(be, v);
}
static void test_attention(chk *c) {
    static const int shapes[][6] = {/* B, T, S, H, Hkv, hd */
                                    {2, 37, 37, 4, 2, 20},
                                    {1, 5, 70, 3, 1, 72},
                                    {1, 33, 40, 2, 2, 130}};
    for (size_t s = 0; s < ETM_ARRAY_LEN(shapes); s++) {
        const int *sh = shapes[s];
        attn_args a = {0};
        a.B = sh[0];
        a.T = sh[1];
        a.S = sh[2];
        a.H = sh[3];
        a.Hkv = sh[4];
        a.hd = sh[5];
        size_t nq = (size_t)a.B * a.T * a.H * a.hd, nk = (size_t)a.B * a.S * a.Hkv * a.hd;
        size_t nl = (size_t)a.B * a.H * a.T;
        a.q = h_normal(c, nq, 1.0f);
        a.k = h_normal(c, nk, 1.0f);
        a.v = h_normal(c, nk, 1.0f);
        char name[64];
        snprintf(name, sizeof name, "attention_forward B%d T%d S%d H%d/%d hd%d", a.B, a.T, a.S,
                 a.H, a.Hkv, a.hd);
        part pf[] = {{"out", nq, TOL_ATTN}, {"lse", nl, TOL_ATTN}};
        check_case(c, name, run_attention, &a, 2, pf);
        /* The backward gets the reference's forward outputs, so both sides start equal. */
        float *fwd = etm_malloc((nq + nl) * sizeof(float));
        run_attention(c->ref, &a, fwd);
        a.out = fwd;
        a.lse = fwd + nq;
        a.dout = h_normal(c, nq, 1.0f);
        a.dq = h_normal(c, nq, 1.0f);
        a.dk = h_normal(c, nk, 1.0f);
        a.dv = h_normal(c, nk, 1.0f);
        a.backward = 1;
        snprintf(name, sizeof name, "attention_backward B%d T%d S%d H%d/%d hd%d", a.B, a.T, a.S,
                 a.H, a.Hkv, a.hd);
        part pb[] = {{"dq (+=)", nq, TOL_ATTN}, {"dk (+=)", nk, TOL_ATTN}, {"dv (+=)", nk, TOL_ATTN}};
        check_case(c, name, run_attention, &a, 3, pb);
        free(fwd);
        free((void *)a.q);
        free((void *)a.k);
        free((void *)a.v);
        free((void *)a.dout);
        free((void *)a.dq);
        free((void *)a.dk);
        free((void *)a.dv);
    }
}

/* ---- activations, cross-entropy, router scores ------------------------------------------- */
typedef struct {
    int op;
    const float *x, *dout, *dx;
    int N, E;
    float cap;
} act_args;
enum { A_RELU2, A_SOFTCAP, A_SIGMOID, A_SOFTMAX, A_LSE };
static void run_act(etm_backend *be, const void *va, float *out) {
    const act_args *a = va;
    size_t n = (size_t)a->N * a->E;
    float *x = dput(be, a->x, n * sizeof(float));
    float *dout = dput(be, a->dout, n * sizeof(float));
    float *dx = dput(be, a->dx, n * sizeof(float));
    float *o = dput(be, NULL, n * sizeof(float));
    switch (a->op) {
    case A_RELU2:
        be->relu2_forward(be, o, x, n);
        be->relu2_backward(be, dx, dout, x, n);
        break;
    case A_SOFTCAP: be->softcap(be, o, x, n, a->cap); break;
    case A_SIGMOID:
        be->sigmoid_forward(be, o, x, n);
        be->sigmoid_backward(be, dx, dout, o, n);
        break;
    case A_SOFTMAX:
        be->softmax_forward(be, o, x, a->N, a->E);
        be->softmax_backward(be, dx, dout, o, a->N, a->E);
        break;
    default: be->logsumexp_rows(be, o, x, a->N, a->E); break;
    }
    dget(be, out, o, a->op == A_LSE ? (size_t)a->N : n);
    if (a->op != A_LSE && a->op != A_SOFTCAP) dget(be, out + n, dx, n);
    be->free(be, x);
    be->free(be, dout);
    be->free(be, dx);
    be->free(be, o);
}
static void test_act(chk *c) {
    int N = 37, E = 19;
    size_t n = (size_t)N * E;
    act_args a = {0, h_normal(c, n, 3.0f), h_normal(c, n, 1.0f), h_normal(c, n, 1.0f), N, E, 15.0f};
    part two[] = {{"out", n, TOL_ROUND}, {"dx (+=)", n, TOL_ROUND}};
    a.op = A_RELU2;
    check_case(c, "relu2 forward, backward", run_act, &a, 2, two);
    two[0].tol = two[1].tol = TOL_LIBM;
    a.op = A_SIGMOID;
    check_case(c, "sigmoid forward, backward", run_act, &a, 2, two);
    a.op = A_SOFTMAX;
    check_case(c, "softmax forward, backward", run_act, &a, 2, two);
    part one = {"out", (size_t)N, TOL_LIBM};
    a.op = A_LSE;
    check_case(c, "logsumexp_rows", run_act, &a, 1, &one);
    const float *x = a.x;
    float *big = h_normal(c, n, 20.0f); /* reaches the cap's flat ends */
    a.x = big;
    a.op = A_SOFTCAP;
    part cap = {"out", n, TOL_LIBM};
    check_case(c, "softcap cap=15", run_act, &a, 1, &cap);
    a.cap = 2.5f;
    check_case(c, "softcap cap=2.5", run_act, &a, 1, &cap);
    free(big);
    free((void *)x);
    free((void *)a.dout);
    free((void *)a.dx);
}

typedef struct {
    const float *logits, *dlogits;
    const int32_t *targets;
    int N, V;
    float cap, dloss;
} xent_args;
static void run_xent(etm_backend *be, const void *va, float *out) {
    const xent_args *a = va;
    size_t n = (size_t)a->N * a->V;
    float *l = dput(be, a->logits, n * sizeof(float));
    float *dl = dput(be, a->dlogits, n * sizeof(float)); /* (writes): old contents ignored */
    int32_t *t = dput(be, a->targets, (size_t)a->N * sizeof(int32_t));
    float *loss = dput(be, NULL, (size_t)a->N * sizeof(float));
    be->fill(be, loss, NAN, (size_t)a->N);
    be->xent_forward(be, loss, l, t, a->N, a->V, a->cap);
    be->xent_backward(be, dl, l, t, a->N, a->V, a->cap, a->dloss);
    dget(be, out, loss, (size_t)a->N);
    dget(be, out + a->N, dl, n);
    be->free(be, l);
    be->free(be, dl);
    be->free(be, t);
    be->free(be, loss);
}
static void test_xent(chk *c) {
    int N = 9, V = 1001;
    int32_t targets[9];
    for (int i = 0; i < N; i++) targets[i] = (int32_t)etm_rng_below(&c->rng, (uint64_t)V);
    targets[2] = -1; /* ignored rows */
    targets[7] = -100;
    targets[4] = V - 1;
    xent_args a = {h_normal(c, (size_t)N * V, 10.0f), h_normal(c, (size_t)N * V, 1.0f), targets,
                   N, V, 15.0f, 0.37f};
    part p[] = {{"losses", (size_t)N, TOL_LIBM}, {"dlogits", (size_t)N * V, TOL_XENT}};
    check_case(c, "xent forward, backward cap=15", run_xent, &a, 2, p);
    free((void *)a.logits);
    free((void *)a.dlogits);
}

/* ---- routing decisions -------------------------------------------------------------------- */
typedef struct {
    int op;
    const float *score, *threshold;
    const uint8_t *eligible;
    int N, E, pool_rows, k, lo, hi;
} route_args;
enum { R_TOPK, R_SELECT, R_KTH };
static void run_route(etm_backend *be, const void *va, float *out) {
    const route_args *a = va;
    size_t n = (size_t)a->N * a->E;
    float *s = dput(be, a->score, n * sizeof(float));
    uint8_t *z = dput(be, NULL, n);
    uint8_t *el = a->eligible ? dput(be, a->eligible, n) : NULL;
    float *thr = a->threshold ? dput(be, a->threshold, (size_t)a->E * sizeof(float)) : NULL;
    if (a->op == R_KTH) {
        size_t m = (size_t)(a->N / a->pool_rows) * a->E;
        float *o = dput(be, NULL, m * sizeof(float));
        be->kth_largest_columns(be, o, s, a->N, a->E, a->pool_rows, a->k);
        dget(be, out, o, m);
        be->free(be, o);
    } else {
        uint8_t *ones = etm_malloc(n ? n : 1);
        memset(ones, 1, n); /* the op writes every entry: start from all ones */
        be->upload(be, z, ones, n);
        free(ones);
        if (a->op == R_TOPK) be->topk_rows(be, z, s, a->N, a->E, a->k);
        else be->select_columns(be, z, s, el, thr, a->N, a->E, a->pool_rows, a->lo, a->hi);
        dget_u8(be, out, z, n);
    }
    be->free(be, s);
    be->free(be, z);
    if (el) be->free(be, el);
    if (thr) be->free(be, thr);
}
/* Every routing decision on N rows in pools of pool rows, with random and with tied scores. */
static void test_routing(chk *c, int N, int E, int pool, int k_target, const char *tag) {
    size_t n = (size_t)N * E;
    for (int tied = 0; tied < 2; tied++) {
        float *score = tied ? h_tied(c, n, 5) : h_normal(c, n, 1.0f);
        float *thr = tied ? h_tied(c, (size_t)E, 5) : h_normal(c, (size_t)E, 1.0f);
        uint8_t *elig = h_mask(c, n, 0.4f);
        char t[48];
        snprintf(t, sizeof t, "%s%s", tag, tied ? " (ties)" : "");
        char name[80];
        part mask = {"z", n, EXACT};
        route_args a = {R_TOPK, score, NULL, NULL, N, E, pool, 2, 0, 0};
        snprintf(name, sizeof name, "topk_rows k=2%s", t);
        check_case(c, name, run_route, &a, 1, &mask);
        a.k = E;
        snprintf(name, sizeof name, "topk_rows k=E%s", t);
        check_case(c, name, run_route, &a, 1, &mask);

        a.op = R_SELECT;
        a.lo = a.hi = k_target; /* expert choice */
        snprintf(name, sizeof name, "select_columns EC%s", t);
        check_case(c, name, run_route, &a, 1, &mask);
        a.threshold = thr; /* expert threshold, unclamped and clamped */
        a.lo = 0;
        a.hi = pool;
        snprintf(name, sizeof name, "select_columns ET%s", t);
        check_case(c, name, run_route, &a, 1, &mask);
        a.lo = k_target / 2;
        a.hi = k_target + k_target / 2;
        snprintf(name, sizeof name, "select_columns ET clamp%s", t);
        check_case(c, name, run_route, &a, 1, &mask);
        a.eligible = elig; /* capacity over an eligibility mask, with and without threshold */
        snprintf(name, sizeof name, "select_columns eligible+thr%s", t);
        check_case(c, name, run_route, &a, 1, &mask);
        a.threshold = NULL;
        a.lo = a.hi = k_target * 2 / 3;
        snprintf(name, sizeof name, "select_columns TC capacity%s", t);
        check_case(c, name, run_route, &a, 1, &mask);
        a.lo = a.hi = pool; /* more than the candidates: takes them all */
        snprintf(name, sizeof name, "select_columns take all%s", t);
        check_case(c, name, run_route, &a, 1, &mask);

        a.op = R_KTH;
        a.eligible = NULL;
        part kth = {"out", (size_t)(N / pool) * E, EXACT};
        int ks[] = {1, k_target, pool};
        for (int i = 0; i < 3; i++) {
            a.k = ks[i];
            snprintf(name, sizeof name, "kth_largest_columns k=%d%s", ks[i], t);
            check_case(c, name, run_route, &a, 1, &kth);
        }
        a.pool_rows = N; /* one pool: the whole batch */
        a.k = k_target * 2 + 1;
        kth.n = (size_t)E;
        snprintf(name, sizeof name, "kth_largest_columns one pool%s", t);
        check_case(c, name, run_route, &a, 1, &kth);
        free(score);
        free(thr);
        free(elig);
    }
}

/* ---- dispatch and the row/pair movements -------------------------------------------------- */
typedef struct {
    int op;
    const uint8_t *z;
    int N, E, D, P;
    const float *src, *dst, *x, *gate, *dgate;
} disp_args;
enum { D_BUILD, D_GATHER_ROWS, D_SCATTER_ROWS, D_GATHER_PAIRS, D_SCATTER_PAIRS, D_COMBINE_F,
       D_COMBINE_B };
static void run_dispatch(etm_backend *be, const void *va, float *out) {
    const disp_args *a = va;
    int N = a->N, E = a->E, D = a->D, P = a->P;
    etm_dispatch d;
    memset(&d, 0, sizeof d);
    be->dispatch_alloc(be, &d, N + 5, E); /* capacity beyond what is used */
    uint8_t *z = dput(be, a->z, (size_t)N * E);
    be->build_dispatch(be, &d, z, N, E);
    size_t pd = (size_t)P * D, nd = (size_t)N * D;
    switch (a->op) {
    case D_BUILD:
        out[0] = (float)d.n_pairs;
        dget_i32(be, out + 1, d.expert_offsets, (size_t)E + 1);
        for (int e = 0; e <= E; e++) out[2 + E + e] = (float)d.host_expert_offsets[e];
        dget_i32(be, out + 3 + 2 * E, d.token_offsets, (size_t)N + 1);
        dget_i32(be, out + 4 + 2 * E + N, d.pair_token, (size_t)P);
        dget_i32(be, out + 4 + 2 * E + N + P, d.pair_expert, (size_t)P);
        dget_i32(be, out + 4 + 2 * E + N + 2 * P, d.token_pairs, (size_t)P);
        break;
    case D_GATHER_ROWS: {
        float *src = dput(be, a->src, nd * sizeof(float)), *dst = dput(be, a->dst, pd * sizeof(float));
        be->gather_rows(be, dst, src, d.pair_token, P, D);
        dget(be, out, dst, pd);
        be->free(be, src);
        be->free(be, dst);
        break;
    }
    case D_SCATTER_ROWS: {
        float *src = dput(be, a->src, pd * sizeof(float)), *dst = dput(be, a->dst, nd * sizeof(float));
        be->scatter_add_rows(be, dst, src, &d, D);
        dget(be, out, dst, nd);
        be->free(be, src);
        be->free(be, dst);
        break;
    }
    case D_GATHER_PAIRS: {
        float *x = dput(be, a->x, (size_t)N * E * sizeof(float)), *o = dput(be, NULL, (size_t)P * sizeof(float));
        be->gather_pairs(be, o, x, &d);
        dget(be, out, o, (size_t)P);
        be->free(be, x);
        be->free(be, o);
        break;
    }
    case D_SCATTER_PAIRS: {
        float *dx = dput(be, a->x, (size_t)N * E * sizeof(float));
        float *dp = dput(be, a->gate, (size_t)P * sizeof(float));
        be->scatter_add_pairs(be, dx, dp, &d);
        dget(be, out, dx, (size_t)N * E);
        be->free(be, dx);
        be->free(be, dp);
        break;
    }
    case D_COMBINE_F: {
        float *y = dput(be, a->dst, nd * sizeof(float)), *ye = dput(be, a->src, pd * sizeof(float));
        float *g = dput(be, a->gate, (size_t)P * sizeof(float));
        be->combine_forward(be, y, ye, g, &d, D);
        dget(be, out, y, nd);
        be->free(be, y);
        be->free(be, ye);
        be->free(be, g);
        break;
    }
    default: {
        float *dy = dput(be, a->dst, nd * sizeof(float)), *ye = dput(be, a->src, pd * sizeof(float));
        float *g = dput(be, a->gate, (size_t)P * sizeof(float));
        float *dye = dput(be, a->src, pd * sizeof(float)); /* (writes): start from junk */
        float *dg = dput(be, a->dgate, (size_t)P * sizeof(float));
        be->combine_backward(be, dye, dg, dy, ye, g, &d, D);
        dget(be, out, dye, pd);
        dget(be, out + pd, dg, (size_t)P);
        be->free(be, dy);
        be->free(be, ye);
        be->free(be, g);
        be->free(be, dye);
        be->free(be, dg);
        break;
    }
    }
    be->free(be, z);
    be->dispatch_free(be, &d);
}
/* One dispatch and every row/pair movement over it; tag names the size in the report. */
static void test_dispatch(chk *c, int N, int E, int D, const char *tag) {
    uint8_t *z = h_mask(c, (size_t)N * E, 0.3f);
    for (int n = 0; n < N; n++) z[(size_t)n * E + 3] = 0; /* an expert with no tokens */
    for (int e = 0; e < E; e++) z[(size_t)5 * E + e] = 0; /* a token with no experts */
    for (int e = 0; e < E; e++) z[(size_t)6 * E + e] = 1; /* a token with all of them */
    int P = 0;
    char name[80];
    for (size_t i = 0; i < (size_t)N * E; i++) P += z[i];
    disp_args a = {D_BUILD, z, N, E, D, P, h_normal(c, (size_t)N * E * D, 1.0f),
                   h_normal(c, (size_t)N * E * D, 1.0f), h_normal(c, (size_t)N * E, 1.0f),
                   h_normal(c, (size_t)P, 1.0f), h_normal(c, (size_t)P, 1.0f)};
    part build[] = {{"n_pairs", 1, EXACT},
                    {"expert_offs", (size_t)E + 1, EXACT},
                    {"host_offs", (size_t)E + 1, EXACT},
                    {"token_offs", (size_t)N + 1, EXACT},
                    {"pair_token", (size_t)P, EXACT},
                    {"pair_expert", (size_t)P, EXACT},
                    {"token_pairs", (size_t)P, EXACT}};
    snprintf(name, sizeof name, "build_dispatch%s", tag);
    check_case(c, name, run_dispatch, &a, 7, build);
    part pd = {"dst", (size_t)P * D, EXACT}, nd = {"dst (+=)", (size_t)N * D, TOL_ROUND};
    a.op = D_GATHER_ROWS;
    snprintf(name, sizeof name, "gather_rows%s", tag);
    check_case(c, name, run_dispatch, &a, 1, &pd);
    a.op = D_SCATTER_ROWS;
    snprintf(name, sizeof name, "scatter_add_rows%s", tag);
    check_case(c, name, run_dispatch, &a, 1, &nd);
    part pp = {"out", (size_t)P, EXACT}, ne = {"dx (+=)", (size_t)N * E, EXACT};
    a.op = D_GATHER_PAIRS;
    snprintf(name, sizeof name, "gather_pairs%s", tag);
    check_case(c, name, run_dispatch, &a, 1, &pp);
    a.op = D_SCATTER_PAIRS;
    snprintf(name, sizeof name, "scatter_add_pairs%s", tag);
    check_case(c, name, run_dispatch, &a, 1, &ne);
    a.op = D_COMBINE_F;
    nd.name = "y (+=)";
    snprintf(name, sizeof name, "combine_forward%s", tag);
    check_case(c, name, run_dispatch, &a, 1, &nd);
    part cb[] = {{"dye", (size_t)P * D, TOL_ROUND}, {"dgate", (size_t)P, TOL_ROUND}};
    a.op = D_COMBINE_B;
    snprintf(name, sizeof name, "combine_backward%s", tag);
    check_case(c, name, run_dispatch, &a, 2, cb);
    free(z);
    free((void *)a.src);
    free((void *)a.dst);
    free((void *)a.x);
    free((void *)a.gate);
    free((void *)a.dgate);
}

/* ---- optimizer ---------------------------------------------------------------------------- */
typedef struct {
    const float *p, *g, *m, *v;
    size_t n;
} adamw_args;
static void run_adamw(etm_backend *be, const void *va, float *out) {
    const adamw_args *a = va;
    size_t n = a->n;
    float *p = dput(be, a->p, n * sizeof(float)), *g = dput(be, a->g, n * sizeof(float));
    float *m = dput(be, a->m, n * sizeof(float)), *v = dput(be, a->v, n * sizeof(float));
    float b1 = 0.9f, b2 = 0.95f;
    for (int t = 1; t <= 3; t++) /* three steps: bias corrections change */
        be->adamw_update(be, p, g, m, v, n, 1e-3f, b1, b2, 1e-8f, 0.1f,
                         1.0f - powf(b1, (float)t), 1.0f - powf(b2, (float)t));
    dget(be, out, p, n);
    dget(be, out + n, m, n);
    dget(be, out + 2 * n, v, n);
    be->free(be, p);
    be->free(be, g);
    be->free(be, m);
    be->free(be, v);
}
static void test_adamw(chk *c) {
    size_t n = 1001;
    adamw_args a = {h_normal(c, n, 1.0f), h_normal(c, n, 0.1f), h_normal(c, n, 0.01f),
                    h_uniform(c, n, 0.0f, 0.001f), n};
    part p[] = {{"p", n, TOL_ROUND}, {"m", n, TOL_ROUND}, {"v", n, TOL_ROUND}};
    check_case(c, "adamw_update x3", run_adamw, &a, 3, p);
    free((void *)a.p);
    free((void *)a.g);
    free((void *)a.m);
    free((void *)a.v);
}

int etm_check_backend_ops(etm_backend *ref, etm_backend *test, uint64_t seed, FILE *report) {
    chk c;
    c.ref = ref;
    c.test = test;
    c.report = report;
    c.failures = 0;
    etm_rng_seed(&c.rng, seed);
    if (report)
        fprintf(report, "comparing backend %s against %s, seed %llu\n", test->name, ref->name,
                (unsigned long long)seed);
    report_header(&c);
    test_memory(&c);
    test_gemm(&c);
    test_gemm_grouped(&c);
    test_vec(&c);
    test_sum_squares(&c);
    test_embedding(&c);
    test_rmsnorm(&c);
    test_rope(&c);
    test_attention(&c);
    test_act(&c);
    test_xent(&c);
    test_routing(&c, 4 * 53, 7, 53, 9, "");
    test_routing(&c, 2 * 1300, 5, 1300, 260, " pool=1300"); /* longer than one block */
    test_dispatch(&c, 61, 7, 13, "");
    test_dispatch(&c, 2500, 5, 3, " N=2500"); /* longer than one scan block */
    test_adamw(&c);
    if (report) fprintf(report, "%d failed comparison%s\n", c.failures, c.failures == 1 ? "" : "s");
    return c.failures;
}
