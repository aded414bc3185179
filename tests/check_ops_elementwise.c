/* check_ops_elementwise.c: tests of the backend's elementwise operations, reductions, softmax
 * family and AdamW: forwards against slow double-precision loops, backwards by finite
 * differences, and a check that the gradient checker itself rejects a wrong gradient. */
#include "cpu/cpu_internal.h"
#include "ops_testutil.h"

START_TEST(fast_exp_and_tanh_are_accurate) {
    /* every 997th float bit pattern from -104 to 89, plus the edges */
    int worst_ulp = 0;
    for (float x = -104.0f; x < 89.0f;) {
        double want = exp((double)x);
        float got = cpu_expf(x);
        if (want < 1.1754944e-38) { /* below FLT_MIN: 0 (or the tiny value itself) */
            OPS_REQUIRE(got >= 0.0f && got < 1.2e-38f, "exp(%g) = %g", (double)x, (double)got);
        } else if (x <= 88.3f) {
            float wf = (float)want;
            int32_t a, b;
            memcpy(&a, &got, 4);
            memcpy(&b, &wf, 4);
            int ulp = abs(a - b);
            worst_ulp = ulp > worst_ulp ? ulp : worst_ulp;
            OPS_REQUIRE(ulp <= 2, "exp(%.9g) = %.9g, want %.9g (%d ulp)", (double)x, (double)got,
                        want, ulp);
        }
        double t = tanh((double)x / 8.0);
        float tg = cpu_tanhf(x / 8.0f);
        OPS_REQUIRE(fabs(tg - tanh((double)(x / 8.0f))) <= 2e-7, "tanh(%g) = %.9g, want %.9g",
                    (double)(x / 8.0f), (double)tg, t);
        int32_t bits;
        memcpy(&bits, &x, 4);
        bits += x < 0 ? -997 : 997;
        memcpy(&x, &bits, 4);
        if (fabsf(x) < 1e-30f) x = 1e-30f; /* step over zero */
    }
    ck_assert_int_le(worst_ulp, 2);
    ck_assert_float_eq(cpu_expf(0.0f), 1.0f);
    ck_assert_float_eq(cpu_expf(-INFINITY), 0.0f);
    ck_assert(isnan(cpu_expf(NAN)) && isnan(cpu_tanhf(NAN)));
    ck_assert(isinf(cpu_expf(INFINITY)) || cpu_expf(INFINITY) > 1e38f);
    ck_assert_float_eq(cpu_tanhf(100.0f), 1.0f);
    ck_assert_float_eq(cpu_tanhf(-100.0f), -1.0f);
    ck_assert_float_eq(cpu_tanhf(0.0f), 0.0f);
}
END_TEST

/* The vectorised loops (whichever instruction-set clone this machine runs) must give the same
 * bits as the scalar functions: results may not depend on the machine's vector width. */
START_TEST(vector_loops_match_scalar_functions) {
    etm_rng rng;
    etm_rng_seed(&rng, 9);
    const int n = 1003; /* odd: vector body and scalar tail */
    float *x = ops_uniform(&rng, n, -30, 30), *y = ops_floats(n), *z = ops_uniform(&rng, n, -1, 1);
    float *dp = ops_copy(z, n);
    x[5] = NAN;
    x[6] = -INFINITY;
    x[7] = 200.0f;
    cpu_vexp(y, x, 1.5f, n);
    for (int i = 0; i < n; i++) {
        float want = cpu_expf(x[i] - 1.5f);
        OPS_REQUIRE(!memcmp(&y[i], &want, 4), "vexp[%d]", i);
    }
    cpu_vsoftcap(y, x, 15.0f, n);
    for (int i = 0; i < n; i++) {
        float want = cpu_softcap1(x[i], 15.0f, 1.0f / 15.0f);
        OPS_REQUIRE(!memcmp(&y[i], &want, 4), "vsoftcap[%d]", i);
    }
    cpu_vsigmoid(y, x, n);
    for (int i = 0; i < n; i++) {
        float want = 1.0f / (1.0f + cpu_expf(-x[i]));
        OPS_REQUIRE(!memcmp(&y[i], &want, 4), "vsigmoid[%d]", i);
    }
    memcpy(y, x, n * sizeof *y);
    cpu_vattention_ds(y, dp, 2.0f, 0.25f, n);
    for (int i = 0; i < n; i++) {
        float p = cpu_expf(x[i] - 2.0f), ds = p * (z[i] - 0.25f);
        OPS_REQUIRE(!memcmp(&y[i], &p, 4) && !memcmp(&dp[i], &ds, 4), "vattention_ds[%d]", i);
    }
    float m = cpu_vmax(z, n), want_m = -INFINITY;
    for (int i = 0; i < n; i++) want_m = z[i] > want_m ? z[i] : want_m;
    ck_assert_float_eq(m, want_m);
    free(x);
    free(y);
    free(z);
    free(dp);
}
END_TEST

START_TEST(fill_scale_axpy_match_loops) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 10);
    const size_t n = 70001; /* above the parallel threshold, odd */
    float *x = ops_uniform(&rng, n, -2, 2), *y = ops_uniform(&rng, n, -2, 2);
    float *x0 = ops_copy(x, n), *y0 = ops_copy(y, n);
    be->axpy(be, y, -0.375f, x, n);
    for (size_t i = 0; i < n; i++) OPS_CHECK((y[i]) == (y0[i] + -0.375f * x0[i]));
    be->scale(be, x, 3.0f, n);
    for (size_t i = 0; i < n; i++) OPS_CHECK((x[i]) == (x0[i] * 3.0f));
    be->fill(be, x, 0.25f, n - 1);
    for (size_t i = 0; i + 1 < n; i++) OPS_CHECK((x[i]) == (0.25f));
    ck_assert_float_eq(x[n - 1], x0[n - 1] * 3.0f); /* one past the end untouched */
    be->fill(be, x, 1.0f, 0);
    free(x);
    free(y);
    free(x0);
    free(y0);
    etm_backend_free(be);
}
END_TEST

START_TEST(sum_squares_and_column_sum_match_loops) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 11);
    static const size_t sizes[] = {0, 1, 7, 8192, 8193, 3 * 8192 + 5, 200000};
    for (size_t s = 0; s < ETM_ARRAY_LEN(sizes); s++) {
        size_t n = sizes[s];
        float *x = ops_uniform(&rng, n, -3, 3);
        double want = 0.0;
        for (size_t i = 0; i < n; i++) want += (double)x[i] * x[i];
        double got = be->sum_squares(be, x, n);
        ck_assert_msg(fabs(got - want) <= 1e-12 * want, "sum_squares n=%zu: %.17g vs %.17g", n, got,
                      want);
        free(x);
    }
    static const int shapes[][2] = {{1, 1}, {5, 3}, {1000, 37}, {3000, 16}, {64, 200}};
    for (size_t s = 0; s < ETM_ARRAY_LEN(shapes); s++) {
        int N = shapes[s][0], E = shapes[s][1];
        float *in = ops_uniform(&rng, (size_t)N * E, -1, 1), *out = ops_uniform(&rng, E, 5, 6);
        double *want = etm_calloc((size_t)E, sizeof *want);
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++) want[e] += in[(size_t)n * E + e];
        be->column_sum(be, out, in, N, E);
        ops_assert_close("column_sum", out, want, (size_t)E, 1e-6, 1e-6);
        free(in);
        free(out);
        free(want);
    }
    etm_backend_free(be);
}
END_TEST

START_TEST(row_broadcasts_match_loops) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 12);
    const int N = 300, E = 77;
    float *y = ops_uniform(&rng, (size_t)N * E, -1, 1), *v = ops_uniform(&rng, E, -1, 1);
    float *a = ops_uniform(&rng, N, -1, 1), *x = ops_uniform(&rng, (size_t)N * E, -1, 1);
    float *y0 = ops_copy(y, (size_t)N * E);
    be->add_row_vector(be, y, v, N, E);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            OPS_CHECK((y[(size_t)n * E + e]) == (y0[(size_t)n * E + e] + v[e]));
    memcpy(y0, y, (size_t)N * E * sizeof *y);
    be->add_scaled_rows(be, y, a, x, N, E);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            OPS_CHECK((y[(size_t)n * E + e]) ==
                      (y0[(size_t)n * E + e] + a[n] * x[(size_t)n * E + e]));
    free(y);
    free(v);
    free(a);
    free(x);
    free(y0);
    etm_backend_free(be);
}
END_TEST

/* ---- pointwise functions with a backward: relu^2 and sigmoid ------------------------------ */
typedef struct {
    etm_backend *be;
    int op;       /* 0 relu2, 1 sigmoid */
    float *x, *w; /* (n) input, loss weights */
    float *out;   /* (n) scratch */
    size_t n;
} pointwise_ctx;

static double pointwise_loss(void *arg) {
    pointwise_ctx *c = arg;
    if (c->op == 0)
        c->be->relu2_forward(c->be, c->out, c->x, c->n);
    else
        c->be->sigmoid_forward(c->be, c->out, c->x, c->n);
    return ops_dot(c->w, c->out, c->n);
}

/* Analytic gradient of pointwise_loss into dx, starting from dx0 (backward accumulates). */
static void pointwise_grad(pointwise_ctx *c, float *dx, float dx0) {
    for (size_t i = 0; i < c->n; i++) dx[i] = dx0;
    pointwise_loss(c);
    if (c->op == 0)
        c->be->relu2_backward(c->be, dx, c->w, c->x, c->n);
    else
        c->be->sigmoid_backward(c->be, dx, c->w, c->out, c->n);
    for (size_t i = 0; i < c->n; i++) dx[i] -= dx0;
}

START_TEST(relu2_and_sigmoid_forward_and_gradients) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 13);
    const size_t n = 40000;
    pointwise_ctx c = {
        be, 0, ops_uniform(&rng, n, -3, 3), ops_uniform(&rng, n, -1, 1), ops_floats(n), n};
    float *dx = ops_floats(n);
    for (size_t i = 0; i < n; i++) /* keep central differences off relu's kink */
        if (fabsf(c.x[i]) < 0.05f) c.x[i] += c.x[i] < 0 ? -0.1f : 0.1f;
    /* forwards against double formulas */
    be->relu2_forward(be, c.out, c.x, n);
    for (size_t i = 0; i < n; i++) {
        double r = c.x[i] > 0 ? c.x[i] : 0.0;
        OPS_CHECK((fabs(c.out[i] - r * r)) <= (1e-6 * r * r));
    }
    be->sigmoid_forward(be, c.out, c.x, n);
    for (size_t i = 0; i < n; i++)
        OPS_CHECK((fabs(c.out[i] - 1.0 / (1.0 + exp(-(double)c.x[i])))) <= (1e-7));
    for (c.op = 0; c.op < 2; c.op++) {
        pointwise_grad(&c, dx, 0.5f);
        ck_assert_int_eq(ops_grad_check(c.op ? "sigmoid" : "relu2", c.x, n, dx, pointwise_loss, &c,
                                        1e-2f, 1e-2, 1e-3, 200, &rng),
                         0);
    }
    /* the checker must notice a wrong gradient */
    c.op = 1;
    pointwise_grad(&c, dx, 0.0f);
    for (size_t i = 0; i < n; i++) dx[i] *= 1.05f;
    ck_assert_int_gt(ops_grad_check("sigmoid (deliberately wrong)", c.x, n, dx, pointwise_loss, &c,
                                    1e-2f, 1e-2, 1e-3, 200, &rng),
                     100);
    free(c.x);
    free(c.w);
    free(c.out);
    free(dx);
    etm_backend_free(be);
}
END_TEST

START_TEST(softcap_matches_formula) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 14);
    const size_t n = 30000;
    float *x = ops_uniform(&rng, n, -60, 60), *out = ops_floats(n);
    be->softcap(be, out, x, n, 15.0f);
    for (size_t i = 0; i < n; i++) OPS_CHECK((fabs(out[i] - 15.0 * tanh(x[i] / 15.0))) <= (4e-6));
    be->softcap(be, x, x, n, 15.0f); /* in place */
    ck_assert(!memcmp(x, out, n * sizeof *x));
    be->softcap(be, out, x, n, 0.0f); /* no cap: identity */
    ck_assert(!memcmp(x, out, n * sizeof *x));
    free(x);
    free(out);
    etm_backend_free(be);
}
END_TEST

/* ---- softmax over rows ------------------------------------------------------------------ */
typedef struct {
    etm_backend *be;
    float *x, *w, *out; /* (N,E) */
    int N, E;
} softmax_ctx;

static double softmax_loss(void *arg) {
    softmax_ctx *c = arg;
    c->be->softmax_forward(c->be, c->out, c->x, c->N, c->E);
    return ops_dot(c->w, c->out, (size_t)c->N * c->E);
}

START_TEST(softmax_and_logsumexp_forward_and_gradient) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 15);
    const int N = 50, E = 13;
    size_t n = (size_t)N * E;
    softmax_ctx c = {be, ops_uniform(&rng, n, -4, 4), ops_uniform(&rng, n, -1, 1), ops_floats(n), N,
                     E};
    c.x[0] = 1000.0f; /* large logits must not overflow */
    c.x[1] = 999.0f;
    float *lse = ops_floats(N), *dx = ops_uniform(&rng, n, -1, 1), *dx0 = ops_copy(dx, n);
    double *want = etm_malloc(n * sizeof *want), *want_lse = etm_malloc(N * sizeof *want_lse);
    for (int r = 0; r < N; r++) {
        const float *xr = c.x + (size_t)r * E;
        double m = -INFINITY, s = 0.0;
        for (int e = 0; e < E; e++) m = fmax(m, xr[e]);
        for (int e = 0; e < E; e++) s += exp(xr[e] - m);
        for (int e = 0; e < E; e++) want[(size_t)r * E + e] = exp(xr[e] - m) / s;
        want_lse[r] = m + log(s);
    }
    softmax_loss(&c);
    ops_assert_close("softmax", c.out, want, n, 1e-5, 1e-7);
    be->logsumexp_rows(be, lse, c.x, N, E);
    ops_assert_close("logsumexp", lse, want_lse, N, 1e-6, 1e-6);
    be->softmax_backward(be, dx, c.w, c.out, N, E);
    for (size_t i = 0; i < n; i++) dx[i] -= dx0[i];
    ck_assert_int_eq(
        ops_grad_check("softmax", c.x, n, dx, softmax_loss, &c, 1e-2f, 1e-2, 1e-4, 400, &rng), 0);
    free(c.x);
    free(c.w);
    free(c.out);
    free(lse);
    free(dx);
    free(dx0);
    free(want);
    free(want_lse);
    etm_backend_free(be);
}
END_TEST

/* ---- soft-capped cross-entropy ------------------------------------------------------------ */
typedef struct {
    etm_backend *be;
    float *logits;    /* (N,V) */
    int32_t *targets; /* (N) */
    float *losses;    /* (N) */
    int N, V;
    float cap, dloss;
} xent_ctx;

static double xent_loss(void *arg) {
    xent_ctx *c = arg;
    c->be->xent_forward(c->be, c->losses, c->logits, c->targets, c->N, c->V, c->cap);
    double s = 0.0;
    for (int n = 0; n < c->N; n++) s += c->losses[n];
    return c->dloss * s;
}

START_TEST(xent_forward_and_gradient_with_softcap_and_ignored_targets) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 16);
    const int N = 12, V = 157;
    static const float caps[] = {15.0f, 2.0f, 0.0f};
    for (size_t ci = 0; ci < ETM_ARRAY_LEN(caps); ci++) {
        size_t n = (size_t)N * V;
        xent_ctx c = {be,
                      ops_uniform(&rng, n, -6, 6),
                      etm_malloc(N * sizeof(int32_t)),
                      ops_floats(N),
                      N,
                      V,
                      caps[ci],
                      0.7f};
        for (int r = 0; r < N; r++)
            c.targets[r] = r % 4 == 1 ? -1 : (int32_t)etm_rng_below(&rng, V);
        c.logits[5] = 40.0f; /* far into the cap */
        xent_loss(&c);
        for (int r = 0; r < N; r++) {
            if (c.targets[r] < 0) {
                OPS_CHECK((c.losses[r]) == (0.0f));
                continue;
            }
            double m = -INFINITY, s = 0.0, zt = 0.0;
            for (int j = 0; j < V; j++) {
                double x = c.logits[(size_t)r * V + j];
                double z = c.cap > 0 ? c.cap * tanh(x / c.cap) : x;
                m = fmax(m, z);
                if (j == c.targets[r]) zt = z;
            }
            for (int j = 0; j < V; j++) {
                double x = c.logits[(size_t)r * V + j];
                s += exp((c.cap > 0 ? c.cap * tanh(x / c.cap) : x) - m);
            }
            double want = m + log(s) - zt;
            OPS_REQUIRE(fabs(c.losses[r] - want) <= 1e-5 * (1 + fabs(want)),
                        "xent cap %g row %d: %.8g vs %.8g", (double)c.cap, r, (double)c.losses[r],
                        want);
        }
        float *dlogits = ops_uniform(&rng, n, 7, 8); /* (writes): garbage must vanish */
        be->xent_backward(be, dlogits, c.logits, c.targets, N, V, c.cap, c.dloss);
        for (int r = 0; r < N; r++)
            if (c.targets[r] < 0)
                for (int j = 0; j < V; j++) OPS_CHECK((dlogits[(size_t)r * V + j]) == (0.0f));
        char what[64];
        snprintf(what, sizeof what, "xent cap %g", (double)c.cap);
        ck_assert_int_eq(
            ops_grad_check(what, c.logits, n, dlogits, xent_loss, &c, 1e-2f, 1e-2, 1e-4, 400, &rng),
            0);
        free(c.logits);
        free(c.targets);
        free(c.losses);
        free(dlogits);
    }
    etm_backend_free(be);
}
END_TEST

START_TEST(adamw_matches_scalar_reference) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 17);
    const size_t n = 50000;
    float *p = ops_uniform(&rng, n, -1, 1), *m = ops_floats(n), *v = ops_floats(n);
    double *rp = etm_malloc(n * sizeof *rp), *rm = etm_calloc(n, sizeof *rm),
           *rv = etm_calloc(n, sizeof *rv);
    for (size_t i = 0; i < n; i++) rp[i] = p[i];
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    for (int t = 1; t <= 5; t++) {
        float *g = ops_uniform(&rng, n, -1, 1);
        float bc1 = 1.0f - powf(b1, (float)t), bc2 = 1.0f - powf(b2, (float)t);
        be->adamw_update(be, p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2);
        for (size_t i = 0; i < n; i++) {
            rm[i] = b1 * rm[i] + (1.0 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1.0 - b2) * (double)g[i] * g[i];
            rp[i] -= lr * (rm[i] / bc1 / (sqrt(rv[i] / bc2) + eps) + wd * rp[i]);
        }
        free(g);
    }
    ops_assert_close("adamw p", p, rp, n, 1e-5, 1e-6);
    ops_assert_close("adamw m", m, rm, n, 1e-5, 1e-7);
    ops_assert_close("adamw v", v, rv, n, 1e-5, 1e-8);
    free(p);
    free(m);
    free(v);
    free(rp);
    free(rm);
    free(rv);
    etm_backend_free(be);
}
END_TEST

static Suite *elementwise_suite(void) {
    Suite *s = suite_create("ops_elementwise");
    TCase *tc = tcase_create("elementwise");
    tcase_set_timeout(tc, 300); /* busy machines; serial-tests ignores CK_DEFAULT_TIMEOUT */
    tcase_add_test(tc, fast_exp_and_tanh_are_accurate);
    tcase_add_test(tc, vector_loops_match_scalar_functions);
    tcase_add_test(tc, fill_scale_axpy_match_loops);
    tcase_add_test(tc, sum_squares_and_column_sum_match_loops);
    tcase_add_test(tc, row_broadcasts_match_loops);
    tcase_add_test(tc, relu2_and_sigmoid_forward_and_gradients);
    tcase_add_test(tc, softcap_matches_formula);
    tcase_add_test(tc, softmax_and_logsumexp_forward_and_gradient);
    tcase_add_test(tc, xent_forward_and_gradient_with_softcap_and_ignored_targets);
    tcase_add_test(tc, adamw_matches_scalar_reference);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(elementwise_suite()); }
