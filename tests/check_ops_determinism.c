/* check_ops_determinism.c: every backend operation, on inputs large enough to be split over
 * threads, must give byte-identical outputs with 1, 2 and 3 OpenMP threads. */
#include "ops_testutil.h"

/* Inputs shared by the operations (host memory; the CPU backend's memory is host memory). */
typedef struct {
    etm_backend *be;
    etm_rng rng; /* reseeded before each run so every run sees the same data */
} det_ctx;

/* Collects the bytes an operation produced. */
typedef struct {
    unsigned char *bytes;
    size_t len, cap;
} det_out;

static void keep(det_out *o, const void *p, size_t n) {
    if (o->len + n > o->cap) {
        o->cap = 2 * (o->len + n);
        o->bytes = etm_realloc(o->bytes, o->cap);
    }
    memcpy(o->bytes + o->len, p, n);
    o->len += n;
}

#define KEEP(o, p, n) keep((o), (p), (size_t)(n) * sizeof *(p))

static float *rnd(det_ctx *c, size_t n) { return ops_uniform(&c->rng, n, -2, 2); }

static void op_elementwise(det_ctx *c, det_out *o) {
    etm_backend *be = c->be;
    const size_t n = 100003;
    float *x = rnd(c, n), *y = rnd(c, n), *g = rnd(c, n), *m = rnd(c, n), *v = rnd(c, n);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    be->axpy(be, y, 0.3f, x, n);
    be->scale(be, y, 1.7f, n);
    KEEP(o, y, n);
    be->relu2_forward(be, y, x, n);
    KEEP(o, y, n);
    be->relu2_backward(be, y, g, x, n);
    KEEP(o, y, n);
    be->sigmoid_forward(be, y, x, n);
    KEEP(o, y, n);
    be->sigmoid_backward(be, x, g, y, n);
    KEEP(o, x, n);
    be->softcap(be, y, x, n, 1.5f);
    KEEP(o, y, n);
    be->adamw_update(be, x, g, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 0.3f);
    KEEP(o, x, n);
    KEEP(o, m, n);
    KEEP(o, v, n);
    double ss = be->sum_squares(be, x, n);
    KEEP(o, &ss, 1);
    be->fill(be, y, 0.5f, n);
    KEEP(o, y, n);
    free(x);
    free(y);
    free(g);
    free(m);
    free(v);
}

static void op_rows(det_ctx *c, det_out *o) {
    etm_backend *be = c->be;
    const int N = 2000, E = 24, C = 256;
    float *x = rnd(c, (size_t)N * C), *y = rnd(c, (size_t)N * C), *g = rnd(c, (size_t)N * C);
    float *v = rnd(c, C), *a = rnd(c, N), *r = rnd(c, N);
    be->column_sum(be, v, x, N, E);
    KEEP(o, v, E);
    be->add_row_vector(be, y, v, N, C);
    be->add_scaled_rows(be, y, a, x, N, C);
    KEEP(o, y, (size_t)N * C);
    be->rmsnorm_forward(be, y, r, x, N, C, 1e-5f);
    KEEP(o, y, (size_t)N * C);
    KEEP(o, r, N);
    be->rmsnorm_backward(be, x, g, y, r, N, C);
    KEEP(o, x, (size_t)N * C);
    be->softmax_forward(be, y, x, N, E);
    KEEP(o, y, (size_t)N * E);
    be->softmax_backward(be, g, x, y, N, E);
    KEEP(o, g, (size_t)N * E);
    be->logsumexp_rows(be, r, x, N, E);
    KEEP(o, r, N);
    free(x);
    free(y);
    free(g);
    free(v);
    free(a);
    free(r);
}

static void op_embedding_rope_xent(det_ctx *c, det_out *o) {
    etm_backend *be = c->be;
    const int N = 2048, D = 128, V = 500, Vx = 3001, Nx = 40;
    float *wte = rnd(c, (size_t)V * D), *out = rnd(c, (size_t)N * D), *dw = rnd(c, (size_t)V * D);
    int32_t *tok = etm_malloc(N * sizeof *tok);
    for (int n = 0; n < N; n++) tok[n] = (int32_t)etm_rng_below(&c->rng, V);
    be->embedding_forward(be, out, wte, tok, N, D);
    KEEP(o, out, (size_t)N * D);
    be->embedding_backward(be, dw, out, tok, N, D, V);
    KEEP(o, dw, (size_t)V * D);
    /* rope on (B=4, T=128, H=4, hd=32) = out viewed as such */
    float *cs = rnd(c, 300 * 16), *sn = rnd(c, 300 * 16);
    be->rope_forward(be, out, cs, sn, 4, 128, 4, 32, 7);
    KEEP(o, out, (size_t)N * D);
    be->rope_backward(be, out, cs, sn, 4, 128, 4, 32, 7);
    KEEP(o, out, (size_t)N * D);
    float *logits = rnd(c, (size_t)Nx * Vx), *dl = rnd(c, (size_t)Nx * Vx), *loss = rnd(c, Nx);
    int32_t *tg = etm_malloc(Nx * sizeof *tg);
    for (int n = 0; n < Nx; n++) tg[n] = n % 5 ? (int32_t)etm_rng_below(&c->rng, Vx) : -1;
    be->xent_forward(be, loss, logits, tg, Nx, Vx, 15.0f);
    KEEP(o, loss, Nx);
    be->xent_backward(be, dl, logits, tg, Nx, Vx, 15.0f, 0.01f);
    KEEP(o, dl, (size_t)Nx * Vx);
    free(wte);
    free(out);
    free(dw);
    free(tok);
    free(cs);
    free(sn);
    free(logits);
    free(dl);
    free(loss);
    free(tg);
}

static void op_attention(det_ctx *c, det_out *o) {
    etm_backend *be = c->be;
    /* GQA with several row blocks; then a KV-cache shape without sharing */
    static const int shapes[][6] = {{2, 160, 160, 4, 2, 16}, {3, 37, 90, 2, 2, 12}};
    for (size_t s = 0; s < ETM_ARRAY_LEN(shapes); s++) {
        int B = shapes[s][0], T = shapes[s][1], S = shapes[s][2], H = shapes[s][3],
            Hkv = shapes[s][4], hd = shapes[s][5];
        size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * S * Hkv * hd;
        float *q = rnd(c, nq), *k = rnd(c, nk), *v = rnd(c, nk), *out = rnd(c, nq),
              *lse = rnd(c, (size_t)B * H * T), *dout = rnd(c, nq);
        float *dq = rnd(c, nq), *dk = rnd(c, nk), *dv = rnd(c, nk);
        be->attention_forward(be, out, lse, q, k, v, B, T, S, H, Hkv, hd);
        KEEP(o, out, nq);
        KEEP(o, lse, (size_t)B * H * T);
        be->attention_backward(be, dq, dk, dv, dout, q, k, v, out, lse, B, T, S, H, Hkv, hd);
        KEEP(o, dq, nq);
        KEEP(o, dk, nk);
        KEEP(o, dv, nk);
        free(q);
        free(k);
        free(v);
        free(out);
        free(lse);
        free(dout);
        free(dq);
        free(dk);
        free(dv);
    }
}

static void op_routing(det_ctx *c, det_out *o) {
    etm_backend *be = c->be;
    const int N = 4096, E = 16, D = 64;
    float *s = rnd(c, (size_t)N * E), *thr = rnd(c, E), *kth = rnd(c, 4 * E);
    for (int i = 0; i < N * E; i++) s[i] = roundf(s[i] * 8.0f) / 8.0f; /* ties */
    uint8_t *z = etm_malloc((size_t)N * E), *z2 = etm_malloc((size_t)N * E);
    be->topk_rows(be, z, s, N, E, 2);
    KEEP(o, z, (size_t)N * E);
    be->select_columns(be, z2, s, z, NULL, N, E, 1024, 100, 100);
    KEEP(o, z2, (size_t)N * E);
    be->select_columns(be, z2, s, NULL, thr, N, E, 2048, 0, 2048);
    KEEP(o, z2, (size_t)N * E);
    be->kth_largest_columns(be, kth, s, N, E, 1024, 300);
    KEEP(o, kth, 4 * E);
    etm_dispatch d;
    be->dispatch_alloc(be, &d, N, E);
    be->build_dispatch(be, &d, z2, N, E);
    int P = d.n_pairs;
    KEEP(o, d.expert_offsets, E + 1);
    KEEP(o, d.pair_token, P);
    KEEP(o, d.pair_expert, P);
    KEEP(o, d.token_offsets, N + 1);
    KEEP(o, d.token_pairs, P);
    float *x = rnd(c, (size_t)N * D), *rows = rnd(c, (size_t)P * D), *gate = rnd(c, P);
    float *y = rnd(c, (size_t)N * D), *dye = rnd(c, (size_t)P * D), *pair = rnd(c, P);
    be->gather_rows(be, rows, x, d.pair_token, P, D);
    KEEP(o, rows, (size_t)P * D);
    be->scatter_add_rows(be, y, rows, &d, D);
    KEEP(o, y, (size_t)N * D);
    be->gather_pairs(be, pair, s, &d);
    KEEP(o, pair, P);
    be->scatter_add_pairs(be, s, pair, &d);
    KEEP(o, s, (size_t)N * E);
    be->combine_forward(be, y, rows, gate, &d, D);
    KEEP(o, y, (size_t)N * D);
    be->combine_backward(be, dye, pair, y, rows, gate, &d, D);
    KEEP(o, dye, (size_t)P * D);
    KEEP(o, pair, P);
    be->dispatch_free(be, &d);
    free(s);
    free(thr);
    free(kth);
    free(z);
    free(z2);
    free(x);
    free(rows);
    free(gate);
    free(y);
    free(dye);
    free(pair);
}

static void op_gemm(det_ctx *c, det_out *o) {
    etm_backend *be = c->be;
    const int M = 512, N = 1024, K = 256;
    float *A = rnd(c, (size_t)M * K), *B = rnd(c, (size_t)K * N), *C = rnd(c, (size_t)M * N);
    be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, M, N, K, 1.0f, A, K, B, N, 1.0f, C, N);
    KEEP(o, C, (size_t)M * N);
    free(A);
    free(B);
    free(C);
}

typedef struct {
    const char *name;
    void (*run)(det_ctx *c, det_out *o);
} det_op;

static const det_op ops[] = {
    {"elementwise", op_elementwise},
    {"rows", op_rows},
    {"embedding/rope/xent", op_embedding_rope_xent},
    {"attention", op_attention},
    {"routing/dispatch", op_routing},
    {"gemm", op_gemm},
};

START_TEST(every_op_is_identical_across_thread_counts) {
    const det_op *op = &ops[_i];
    det_ctx c = {ops_backend(), {{0}}};
    int saved = ops_max_threads();
    det_out ref = {NULL, 0, 0};
    ops_set_threads(1);
    etm_rng_seed(&c.rng, 77);
    op->run(&c, &ref);
    ck_assert_uint_gt(ref.len, 0);
    for (int t = 2; t <= 3; t++) {
        det_out got = {NULL, 0, 0};
        ops_set_threads(t);
        etm_rng_seed(&c.rng, 77);
        op->run(&c, &got);
        ck_assert_uint_eq(got.len, ref.len);
        size_t first = 0;
        while (first < ref.len && got.bytes[first] == ref.bytes[first]) first++;
        ck_assert_msg(first == ref.len, "%s: byte %zu of %zu differs between 1 and %d threads",
                      op->name, first, ref.len, t);
        free(got.bytes);
    }
    ops_set_threads(saved);
    free(ref.bytes);
    etm_backend_free(c.be);
}
END_TEST

static Suite *determinism_suite(void) {
    Suite *s = suite_create("ops_determinism");
    TCase *tc = tcase_create("determinism");
    tcase_set_timeout(tc, 300); /* busy machines; serial-tests ignores CK_DEFAULT_TIMEOUT */
    tcase_add_loop_test(tc, every_op_is_identical_across_thread_counts, 0, (int)ETM_ARRAY_LEN(ops));
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(determinism_suite()); }
