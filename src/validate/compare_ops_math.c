/* compare_ops_math.c: the op-by-op comparison of memory, matrix products, elementwise operations, reductions and the optimizer (compare_ops_case.h). */
#include <config.h>

#include "compare_ops_case.h"

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
void etm_cmp_memory(chk *c) {
    memory_args a = {h_normal(c, 101, 1.0f), 101};
    part p[] = {{"copy", 101, EXACT}, {"zero", 101, EXACT}, {"alloc", 101, EXACT}};
    etm_cmp_case(c, "copy/zero/alloc", run_memory, &a, 3, p);
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
void etm_cmp_gemm(chk *c) {
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
            etm_cmp_case(c, names[ta][tb], run_gemm, &a, 1, &p);
            if (ta == 0 && tb == 0) {
                /* beta = 0 ignores C (even NaN there); K = 0 only scales C */
                float *cn = (float *)a.C;
                cn[5] = NAN;
                a.beta = 0.0f;
                etm_cmp_case(c, "gemm NN beta=0 over NaN", run_gemm, &a, 1, &p);
                cn[5] = 1.5f;
                a.K = 0;
                a.beta = 0.5f;
                part p0 = {"C", a.c_n, EXACT};
                etm_cmp_case(c, "gemm K=0 scales C", run_gemm, &a, 1, &p0);
            }
            free((void *)a.A);
            free((void *)a.B);
            free((void *)a.C);
        }
}
void etm_cmp_gemm_grouped(chk *c) {
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
    etm_cmp_case(c, "gemm_grouped NT", run_gemm, &a, 1, &p);
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
    etm_cmp_case(c, "gemm_grouped TN (K=0 group)", run_gemm, &b, 1, &q);
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
void etm_cmp_vec(chk *c) {
    int N = 1037, E = 19;
    size_t n = (size_t)N * E;
    vec_args a = {0, h_normal(c, n, 1.0f), h_normal(c, n, 1.0f), h_normal(c, (size_t)N, 1.0f), N,
                  E, -0.37f};
    part full = {"y", n, EXACT}, col = {"out", (size_t)E, TOL_ROUND};
    a.op = V_FILL;
    etm_cmp_case(c, "fill", run_vec, &a, 1, &full);
    a.op = V_SCALE;
    etm_cmp_case(c, "scale", run_vec, &a, 1, &full);
    full.tol = TOL_ROUND;
    a.op = V_AXPY;
    etm_cmp_case(c, "axpy", run_vec, &a, 1, &full);
    a.op = V_COLSUM;
    etm_cmp_case(c, "column_sum", run_vec, &a, 1, &col);
    a.op = V_ADDROW;
    etm_cmp_case(c, "add_row_vector", run_vec, &a, 1, &full);
    a.op = V_ADDSCALED;
    etm_cmp_case(c, "add_scaled_rows", run_vec, &a, 1, &full);
    free((void *)a.x);
    free((void *)a.y);
    free((void *)a.v);
}

void etm_cmp_sum_squares(chk *c) {
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
void etm_cmp_adamw(chk *c) {
    size_t n = 1001;
    adamw_args a = {h_normal(c, n, 1.0f), h_normal(c, n, 0.1f), h_normal(c, n, 0.01f),
                    h_uniform(c, n, 0.0f, 0.001f), n};
    part p[] = {{"p", n, TOL_ROUND}, {"m", n, TOL_ROUND}, {"v", n, TOL_ROUND}};
    etm_cmp_case(c, "adamw_update x3", run_adamw, &a, 3, p);
    free((void *)a.p);
    free((void *)a.g);
    free((void *)a.m);
    free((void *)a.v);
}

/* ---- syrk_batched --------------------------------------------------------------------------- */
typedef struct {
    int trans, count, n, k, lda, ldc;
    size_t sa, sc;
    float alpha, beta;
    const float *A, *C;
    size_t a_n, c_n;
} syrk_args;
static void run_syrk(etm_backend *be, const void *va, float *out) {
    const syrk_args *a = va;
    float *A = dput(be, a->A, a->a_n * sizeof(float));
    float *C = dput(be, a->C, a->c_n * sizeof(float));
    be->syrk_batched(be, a->trans, a->count, a->n, a->k, a->alpha, A, a->lda, a->sa, a->beta, C,
                     a->ldc, a->sc);
    dget(be, out, C, a->c_n);
    be->free(be, A);
    be->free(be, C);
}
void etm_cmp_syrk_batched(chk *c) {
    /* Newton-Schulz's Gram matrices: 3 matrices of (n, k) (A A^T) or (k, n) (A^T A), padded
     * leading dimensions and strides; C's lower triangle starts as noise the op must overwrite. */
    enum { count = 3, n = 37, k = 21 };
    for (int trans = 0; trans < 2; trans++) {
        int lda = (trans ? n : k) + 3, ldc = n + 2;
        size_t sa = (size_t)(trans ? k : n) * lda + 5, sc = (size_t)n * ldc + 1;
        syrk_args a = {trans, count, n, k, lda, ldc, sa, sc, 0.75f, -1.25f, NULL, NULL,
                       count * sa, count * sc};
        a.A = h_normal(c, a.a_n, 1.0f);
        a.C = h_normal(c, a.c_n, 1.0f);
        part p = {"C", a.c_n, TOL_GEMM};
        etm_cmp_case(c, trans ? "syrk_batched T (A^T A)" : "syrk_batched N (A A^T)", run_syrk, &a, 1, &p);
        free((void *)a.A);
        free((void *)a.C);
    }
}
