/* check_ops_layers.c: tests of the backend's transformer pieces: embedding, RMSNorm, rotary
 * embedding and causal grouped-query attention. Forwards are compared with slow double-precision
 * loops; backwards with central finite differences of sum(w * out) for random w, including
 * attention with shared kv heads (H != Hkv), a KV cache (S > T), odd sizes (T = 7, hd = 6) and
 * more query rows than one block. */
#include "ops_testutil.h"

/* ---- embedding ---------------------------------------------------------------------------- */
typedef struct {
    etm_backend *be;
    float *wte, *w, *out; /* (V,D), (N,D), (N,D) */
    int32_t *tokens;      /* (N) */
    int N, D, V;
} emb_ctx;

static double emb_loss(void *arg) {
    emb_ctx *c = arg;
    c->be->embedding_forward(c->be, c->out, c->wte, c->tokens, c->N, c->D);
    return ops_dot(c->w, c->out, (size_t)c->N * c->D);
}

START_TEST(embedding_forward_and_backward) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 20);
    const int N = 300, D = 70, V = 23; /* many repeated tokens; D not a multiple of 16 */
    emb_ctx c = {be,
                 ops_uniform(&rng, (size_t)V * D, -1, 1),
                 ops_uniform(&rng, (size_t)N * D, -1, 1),
                 ops_floats((size_t)N * D),
                 etm_malloc(N * sizeof(int32_t)),
                 N,
                 D,
                 V};
    for (int n = 0; n < N; n++) c.tokens[n] = (int32_t)etm_rng_below(&rng, V - 1); /* V-1 unused */
    emb_loss(&c);
    for (int n = 0; n < N; n++)
        OPS_CHECK(
            !memcmp(c.out + (size_t)n * D, c.wte + (size_t)c.tokens[n] * D, D * sizeof(float)));
    float *dwte = ops_uniform(&rng, (size_t)V * D, -1, 1), *want = ops_copy(dwte, (size_t)V * D);
    be->embedding_backward(be, dwte, c.w, c.tokens, N, D, V);
    for (int n = 0; n < N; n++) /* the documented order: tokens in order, per dwte element */
        for (int d = 0; d < D; d++) want[(size_t)c.tokens[n] * D + d] += c.w[(size_t)n * D + d];
    ck_assert(!memcmp(dwte, want, (size_t)V * D * sizeof(float)));
    float *grad = ops_floats((size_t)V * D);
    be->embedding_backward(be, grad, c.w, c.tokens, N, D, V);
    ck_assert_int_eq(ops_grad_check("embedding", c.wte, (size_t)V * D, grad, emb_loss, &c, 1e-2f,
                                    1e-3, 1e-3, 300, &rng),
                     0);
    free(c.wte);
    free(c.w);
    free(c.out);
    free(c.tokens);
    free(dwte);
    free(want);
    free(grad);
    etm_backend_free(be);
}
END_TEST

/* ---- RMSNorm -------------------------------------------------------------------------------- */
typedef struct {
    etm_backend *be;
    float *x, *w, *out, *rstd; /* (N,C) x3, (N) */
    int N, C;
    float eps;
} rms_ctx;

static double rms_loss(void *arg) {
    rms_ctx *c = arg;
    c->be->rmsnorm_forward(c->be, c->out, c->rstd, c->x, c->N, c->C, c->eps);
    return ops_dot(c->w, c->out, (size_t)c->N * c->C);
}

START_TEST(rmsnorm_forward_and_gradient) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 21);
    const int N = 9, C = 37;
    size_t n = (size_t)N * C;
    rms_ctx c = {be,
                 ops_uniform(&rng, n, -2, 2),
                 ops_uniform(&rng, n, -1, 1),
                 ops_floats(n),
                 ops_floats(N),
                 N,
                 C,
                 1e-5f};
    rms_loss(&c);
    double *want = etm_malloc(n * sizeof *want), *want_r = etm_malloc(N * sizeof *want_r);
    for (int r = 0; r < N; r++) {
        double ss = 0.0;
        for (int i = 0; i < C; i++) ss += (double)c.x[r * C + i] * c.x[r * C + i];
        want_r[r] = 1.0 / sqrt(ss / C + 1e-5);
        for (int i = 0; i < C; i++) want[r * C + i] = c.x[r * C + i] * want_r[r];
    }
    ops_assert_close("rmsnorm out", c.out, want, n, 1e-5, 1e-6);
    ops_assert_close("rmsnorm rstd", c.rstd, want_r, N, 1e-5, 1e-6);
    float *dx = ops_uniform(&rng, n, -1, 1), *dx0 = ops_copy(dx, n);
    be->rmsnorm_backward(be, dx, c.w, c.out, c.rstd, N, C);
    for (size_t i = 0; i < n; i++) dx[i] -= dx0[i];
    ck_assert_int_eq(
        ops_grad_check("rmsnorm", c.x, n, dx, rms_loss, &c, 1e-2f, 1e-2, 1e-4, 400, &rng), 0);
    free(c.x);
    free(c.w);
    free(c.out);
    free(c.rstd);
    free(want);
    free(want_r);
    free(dx);
    free(dx0);
    etm_backend_free(be);
}
END_TEST

/* ---- rotary embedding ----------------------------------------------------------------------- */
typedef struct {
    etm_backend *be;
    const float *x;       /* (B,T,H,hd) input */
    float *w, *y;         /* weights, rotated copy */
    const float *cs, *sn; /* (T_max, hd/2) */
    int B, T, H, hd, pos0;
} rope_ctx;

static double rope_loss(void *arg) {
    rope_ctx *c = arg;
    size_t n = (size_t)c->B * c->T * c->H * c->hd;
    memcpy(c->y, c->x, n * sizeof *c->y);
    c->be->rope_forward(c->be, c->y, c->cs, c->sn, c->B, c->T, c->H, c->hd, c->pos0);
    return ops_dot(c->w, c->y, n);
}

START_TEST(rope_forward_and_gradient) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 22);
    const int B = 2, T = 5, H = 3, hd = 6, Tmax = 16, half = hd / 2, pos0 = 4;
    float *cs = ops_floats((size_t)Tmax * half), *sn = ops_floats((size_t)Tmax * half);
    for (int p = 0; p < Tmax; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * pow(10000.0, -2.0 * i / hd);
            cs[p * half + i] = (float)cos(ang);
            sn[p * half + i] = (float)sin(ang);
        }
    size_t n = (size_t)B * T * H * hd;
    float *x = ops_uniform(&rng, n, -1, 1);
    rope_ctx c = {be, x, ops_uniform(&rng, n, -1, 1), ops_floats(n), cs, sn, B, T, H, hd, pos0};
    rope_loss(&c);
    double *want = etm_malloc(n * sizeof *want);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < half; i++) {
                    size_t at = (((size_t)b * T + t) * H + h) * hd;
                    double c1 = cs[(pos0 + t) * half + i], s1 = sn[(pos0 + t) * half + i];
                    double x1 = x[at + i], x2 = x[at + half + i];
                    want[at + i] = x1 * c1 + x2 * s1;
                    want[at + half + i] = -x1 * s1 + x2 * c1;
                }
    ops_assert_close("rope", c.y, want, n, 1e-6, 1e-6);
    float *g = ops_copy(c.w, n);
    be->rope_backward(be, g, cs, sn, B, T, H, hd, pos0); /* in place: dy -> dx */
    ck_assert_int_eq(ops_grad_check("rope", x, n, g, rope_loss, &c, 1e-2f, 1e-3, 1e-4, 200, &rng),
                     0);
    /* backward undoes forward */
    memcpy(g, x, n * sizeof *g);
    be->rope_forward(be, g, cs, sn, B, T, H, hd, pos0);
    be->rope_backward(be, g, cs, sn, B, T, H, hd, pos0);
    ops_assert_close_f("rope round trip", g, x, n, 1e-6, 1e-6);
    free(cs);
    free(sn);
    free(x);
    free(c.w);
    free(c.y);
    free(want);
    free(g);
    etm_backend_free(be);
}
END_TEST

/* ---- attention ------------------------------------------------------------------------------ */
typedef struct {
    etm_backend *be;
    float *q, *k, *v; /* (B,T,H,hd), (B,S,Hkv,hd) x2 */
    float *w, *out, *lse;
    int B, T, S, H, Hkv, hd;
} att_ctx;

static double att_loss(void *arg) {
    att_ctx *c = arg;
    c->be->attention_forward(c->be, c->out, c->lse, c->q, c->k, c->v, c->B, c->T, c->S, c->H,
                             c->Hkv, c->hd);
    return ops_dot(c->w, c->out, (size_t)c->B * c->T * c->H * c->hd);
}

/* out and lse by the definition, in double. */
static void ref_attention(const att_ctx *c, double *out, double *lse) {
    int B = c->B, T = c->T, S = c->S, H = c->H, Hkv = c->Hkv, hd = c->hd;
    double *p = etm_malloc((size_t)S * sizeof *p);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *qi = c->q + (((size_t)b * T + i) * H + h) * hd;
                int g = h / (H / Hkv), visible = S - T + i + 1;
                double m = -INFINITY, s = 0.0;
                for (int j = 0; j < visible; j++) {
                    const float *kj = c->k + (((size_t)b * S + j) * Hkv + g) * hd;
                    double d = 0.0;
                    for (int x = 0; x < hd; x++) d += (double)qi[x] * kj[x];
                    p[j] = d / sqrt((double)hd);
                    m = fmax(m, p[j]);
                }
                for (int j = 0; j < visible; j++) s += exp(p[j] - m);
                lse[((size_t)b * H + h) * T + i] = m + log(s);
                double *o = out + (((size_t)b * T + i) * H + h) * hd;
                for (int x = 0; x < hd; x++) o[x] = 0.0;
                for (int j = 0; j < visible; j++) {
                    const float *vj = c->v + (((size_t)b * S + j) * Hkv + g) * hd;
                    double pj = exp(p[j] - m) / s;
                    for (int x = 0; x < hd; x++) o[x] += pj * vj[x];
                }
            }
    free(p);
}

static void check_attention(int B, int T, int S, int H, int Hkv, int hd, int max_checks,
                            uint64_t seed) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, seed);
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * S * Hkv * hd, nl = (size_t)B * H * T;
    att_ctx c = {be,
                 ops_uniform(&rng, nq, -1.5, 1.5),
                 ops_uniform(&rng, nk, -1.5, 1.5),
                 ops_uniform(&rng, nk, -1, 1),
                 ops_uniform(&rng, nq, -1, 1),
                 ops_floats(nq),
                 ops_floats(nl),
                 B,
                 T,
                 S,
                 H,
                 Hkv,
                 hd};
    att_loss(&c);
    double *want = etm_malloc(nq * sizeof *want), *want_lse = etm_malloc(nl * sizeof *want_lse);
    ref_attention(&c, want, want_lse);
    char what[128];
    snprintf(what, sizeof what, "attention B%d T%d S%d H%d Hkv%d hd%d", B, T, S, H, Hkv, hd);
    ops_assert_close(what, c.out, want, nq, 1e-5, 1e-5);
    ops_assert_close(what, c.lse, want_lse, nl, 1e-5, 1e-5);
    /* backward accumulates: start from random gradients and subtract them */
    float *dq = ops_uniform(&rng, nq, -1, 1), *dk = ops_uniform(&rng, nk, -1, 1),
          *dv = ops_uniform(&rng, nk, -1, 1);
    float *dq0 = ops_copy(dq, nq), *dk0 = ops_copy(dk, nk), *dv0 = ops_copy(dv, nk);
    be->attention_backward(be, dq, dk, dv, c.w, c.q, c.k, c.v, c.out, c.lse, B, T, S, H, Hkv, hd);
    for (size_t i = 0; i < nq; i++) dq[i] -= dq0[i];
    for (size_t i = 0; i < nk; i++) {
        dk[i] -= dk0[i];
        dv[i] -= dv0[i];
    }
    int bad = ops_grad_check("attention dq", c.q, nq, dq, att_loss, &c, 1e-2f, 1e-2, 1e-3,
                             max_checks, &rng);
    bad += ops_grad_check("attention dk", c.k, nk, dk, att_loss, &c, 1e-2f, 1e-2, 1e-3, max_checks,
                          &rng);
    bad += ops_grad_check("attention dv", c.v, nk, dv, att_loss, &c, 1e-2f, 1e-2, 1e-3, max_checks,
                          &rng);
    ck_assert_msg(bad == 0, "%s: %d gradients off", what, bad);
    free(c.q);
    free(c.k);
    free(c.v);
    free(c.w);
    free(c.out);
    free(c.lse);
    free(want);
    free(want_lse);
    free(dq);
    free(dk);
    free(dv);
    free(dq0);
    free(dk0);
    free(dv0);
    etm_backend_free(be);
}

START_TEST(attention_odd_sizes) { check_attention(2, 7, 7, 3, 3, 6, 400, 30); }
END_TEST

START_TEST(attention_grouped_query_heads) { check_attention(2, 7, 7, 4, 2, 6, 400, 31); }
END_TEST

START_TEST(attention_kv_cache) { check_attention(1, 5, 12, 4, 1, 8, 400, 32); }
END_TEST

START_TEST(attention_several_row_blocks) { check_attention(1, 150, 160, 2, 1, 8, 150, 33); }
END_TEST

START_TEST(attention_single_query) { check_attention(3, 1, 9, 2, 2, 4, 200, 34); }
END_TEST

static Suite *layers_suite(void) {
    Suite *s = suite_create("ops_layers");
    TCase *tc = tcase_create("layers");
    tcase_set_timeout(tc, 300); /* busy machines; serial-tests ignores CK_DEFAULT_TIMEOUT */
    tcase_add_test(tc, embedding_forward_and_backward);
    tcase_add_test(tc, rmsnorm_forward_and_gradient);
    tcase_add_test(tc, rope_forward_and_gradient);
    tcase_add_test(tc, attention_odd_sizes);
    tcase_add_test(tc, attention_grouped_query_heads);
    tcase_add_test(tc, attention_kv_cache);
    tcase_add_test(tc, attention_several_row_blocks);
    tcase_add_test(tc, attention_single_query);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(layers_suite()); }
