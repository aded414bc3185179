/* check_ops_routing.c: tests of the backend's routing decisions and dropless dispatch:
 * topk_rows, select_columns and kth_largest_columns against brute force on data full of ties
 * (and infinities, signed zeros, NaN); build_dispatch's invariants on masks with empty experts, a
 * full expert and all-zero rows; gather, scatter and combine against loops and, as each other's
 * adjoints, by finite differences. */
#include "ops_testutil.h"

/* Scores with many exact ties: a few distinct values, plus infinities and -0. */
static float *tied_scores(etm_rng *rng, size_t n, int levels) {
    float *s = ops_floats(n);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = etm_rng_below(rng, (uint64_t)levels + 3);
        s[i] = r == (uint64_t)levels       ? INFINITY
               : r == (uint64_t)levels + 1 ? -INFINITY
               : r == (uint64_t)levels + 2 ? -0.0f
                                           : 0.5f * (float)r - 1.0f;
    }
    return s;
}

/* Does (a, ia) rank before (b, ib)? Larger score first (NaN last), then lower index. */
static int before(float a, int ia, float b, int ib) {
    if (a != a) return 0;
    if (b != b) return 1;
    return a > b || (a == b && ia < ib);
}

START_TEST(topk_rows_matches_brute_force) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 40);
    const int N = 500, E = 13;
    float *s = tied_scores(&rng, (size_t)N * E, 4);
    s[3] = NAN; /* row 0: a NaN never beats a number */
    uint8_t *z = etm_malloc((size_t)N * E);
    static const int ks[] = {0, 1, 2, 5, 12, 13, 20};
    for (size_t ki = 0; ki < ETM_ARRAY_LEN(ks); ki++) {
        int k = ks[ki];
        memset(z, 7, (size_t)N * E); /* (writes) */
        be->topk_rows(be, z, s, N, E, k);
        for (int n = 0; n < N; n++)
            for (int e = 0; e < E; e++) {
                int rank = 0;
                for (int j = 0; j < E; j++)
                    rank += before(s[(size_t)n * E + j], j, s[(size_t)n * E + e], e);
                OPS_REQUIRE(z[(size_t)n * E + e] == (rank < k), "topk k=%d row %d expert %d", k, n,
                            e);
            }
    }
    free(s);
    free(z);
    etm_backend_free(be);
}
END_TEST

/* select_columns by its definition. */
static void ref_select(uint8_t *z, const float *s, const uint8_t *elig, const float *thr, int N,
                       int E, int R, int lo, int hi) {
    memset(z, 0, (size_t)N * E);
    for (int p = 0; p < N / R; p++)
        for (int e = 0; e < E; e++) {
            int n_cand = 0, n_above = 0;
            for (int r = p * R; r < (p + 1) * R; r++) {
                if (elig && !elig[(size_t)r * E + e]) continue;
                n_cand++;
                if (thr && s[(size_t)r * E + e] >= thr[e]) n_above++;
            }
            int take = n_above < lo ? lo : n_above;
            take = take > hi ? hi : take;
            take = take > n_cand ? n_cand : take;
            for (int r = p * R; r < (p + 1) * R; r++) {
                if (elig && !elig[(size_t)r * E + e]) continue;
                int rank = 0;
                for (int j = p * R; j < (p + 1) * R; j++)
                    if (!elig || elig[(size_t)j * E + e])
                        rank += before(s[(size_t)j * E + e], j, s[(size_t)r * E + e], r);
                z[(size_t)r * E + e] = rank < take;
            }
        }
}

START_TEST(select_columns_matches_brute_force) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 41);
    const int N = 240, E = 7;
    float *s = tied_scores(&rng, (size_t)N * E, 5);
    uint8_t *elig = etm_malloc((size_t)N * E), *z = etm_malloc((size_t)N * E),
            *want = etm_malloc((size_t)N * E);
    for (int i = 0; i < N * E; i++) elig[i] = etm_rng_below(&rng, 3) != 0;
    for (int n = 0; n < N; n++) elig[(size_t)n * E + 2] = 0; /* an expert with no candidates */
    float thr[7] = {0.0f, -0.5f, 0.5f, INFINITY, -INFINITY, 1.0f, -1.0f};
    static const int pools[] = {240, 60, 1, 24};
    static const int clamps[][2] = {{10, 10}, {0, 240}, {5, 20}, {0, 3}, {30, 1000}, {0, 0}};
    for (size_t pi = 0; pi < ETM_ARRAY_LEN(pools); pi++)
        for (size_t ci = 0; ci < ETM_ARRAY_LEN(clamps); ci++)
            for (int variant = 0; variant < 4; variant++) {
                const uint8_t *el = variant & 1 ? elig : NULL;
                const float *th = variant & 2 ? thr : NULL;
                int R = pools[pi], lo = clamps[ci][0], hi = clamps[ci][1];
                memset(z, 9, (size_t)N * E);
                be->select_columns(be, z, s, el, th, N, E, R, lo, hi);
                ref_select(want, s, el, th, N, E, R, lo, hi);
                for (int i = 0; i < N * E; i++)
                    OPS_REQUIRE(z[i] == want[i],
                                "select_columns pool %d lo %d hi %d elig %d thr %d: row %d "
                                "expert %d got %d want %d",
                                R, lo, hi, variant & 1, variant >> 1, i / E, i % E, z[i], want[i]);
            }
    free(s);
    free(elig);
    free(z);
    free(want);
    etm_backend_free(be);
}
END_TEST

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

START_TEST(kth_largest_columns_matches_sorting) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 42);
    /* small pools full of ties, and one 64k-row pool of distinct-ish values */
    static const int cases[][4] = {/* N, E, pool_rows, levels */ {120, 5, 40, 3},
                                   {120, 5, 120, 6},
                                   {65536, 3, 65536, 1 << 20},
                                   {4096, 2, 1024, 2}};
    for (size_t ci = 0; ci < ETM_ARRAY_LEN(cases); ci++) {
        int N = cases[ci][0], E = cases[ci][1], R = cases[ci][2];
        float *s = tied_scores(&rng, (size_t)N * E, cases[ci][3]);
        if (cases[ci][3] > 100)
            for (int i = 0; i < N * E; i++) s[i] = etm_rng_normal(&rng);
        float *col = ops_floats(R), *out = ops_floats((size_t)(N / R) * E);
        int ks[] = {1, 2, R / 3 + 1, R - 1, R, 0, R + 1};
        for (size_t kk = 0; kk < ETM_ARRAY_LEN(ks); kk++) {
            int k = ks[kk];
            be->kth_largest_columns(be, out, s, N, E, R, k);
            for (int p = 0; p < N / R; p++)
                for (int e = 0; e < E; e++) {
                    for (int r = 0; r < R; r++) col[r] = s[((size_t)p * R + r) * E + e];
                    qsort(col, (size_t)R, sizeof *col, cmp_desc);
                    float want = k < 1 ? INFINITY : k > R ? -INFINITY : col[k - 1];
                    float got = out[(size_t)p * E + e];
                    OPS_REQUIRE(got == want, "kth N %d pool %d k %d col %d: %g vs %g", N, R, k, e,
                                (double)got, (double)want);
                }
        }
        free(s);
        free(col);
        free(out);
    }
    etm_backend_free(be);
}
END_TEST

/* ---- dispatch ------------------------------------------------------------------------------- */
static void check_dispatch_invariants(const etm_dispatch *d, const uint8_t *z, int N, int E) {
    int total = 0;
    for (int i = 0; i < N * E; i++) total += z[i] != 0;
    ck_assert_int_eq(d->n_pairs, total);
    ck_assert_int_eq(d->expert_offsets[0], 0);
    ck_assert_int_eq(d->expert_offsets[E], total);
    int *seen = etm_calloc((size_t)total + 1, sizeof *seen);
    for (int e = 0; e < E; e++) {
        int count = 0;
        for (int n = 0; n < N; n++) count += z[(size_t)n * E + e] != 0;
        ck_assert_int_eq(d->host_expert_offsets[e], d->expert_offsets[e]);
        ck_assert_int_eq(d->expert_offsets[e + 1] - d->expert_offsets[e], count);
        for (int p = d->expert_offsets[e]; p < d->expert_offsets[e + 1]; p++) {
            OPS_CHECK((d->pair_expert[p]) == (e));
            OPS_CHECK(z[(size_t)d->pair_token[p] * E + e]);
            if (p > d->expert_offsets[e]) OPS_CHECK((d->pair_token[p - 1]) < (d->pair_token[p]));
        }
    }
    ck_assert_int_eq(d->host_expert_offsets[E], total);
    ck_assert_int_eq(d->token_offsets[0], 0);
    for (int n = 0; n < N; n++) {
        int count = 0;
        for (int e = 0; e < E; e++) count += z[(size_t)n * E + e] != 0;
        ck_assert_int_eq(d->token_offsets[n + 1] - d->token_offsets[n], count);
        for (int j = d->token_offsets[n]; j < d->token_offsets[n + 1]; j++) {
            int p = d->token_pairs[j];
            OPS_CHECK(p >= 0 && p < total);
            OPS_CHECK((d->pair_token[p]) == (n));
            if (j > d->token_offsets[n])
                OPS_CHECK((d->pair_expert[d->token_pairs[j - 1]]) < (d->pair_expert[p]));
            seen[p]++;
        }
    }
    for (int p = 0; p < total; p++) OPS_CHECK((seen[p]) == (1));
    free(seen);
}

START_TEST(build_dispatch_invariants) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 43);
    const int N = 2500, E = 9; /* several counting-sort chunks */
    uint8_t *z = etm_malloc((size_t)N * E);
    etm_dispatch d;
    be->dispatch_alloc(be, &d, N, E);
    for (int variant = 0; variant < 3; variant++) {
        for (int i = 0; i < N * E; i++)
            z[i] = etm_rng_below(&rng, 4) == 0 ? (uint8_t)(1 + variant) : 0;
        for (int n = 0; n < N; n++) {
            z[(size_t)n * E + 3] = 0; /* empty expert */
            z[(size_t)n * E + 7] = 1; /* full expert */
        }
        for (int n = 100; n < 200; n++) memset(z + (size_t)n * E, 0, E); /* all-zero rows */
        int n_used = variant == 2 ? 777 : N; /* fewer tokens than allocated */
        be->build_dispatch(be, &d, z, n_used, E);
        check_dispatch_invariants(&d, z, n_used, E);
    }
    memset(z, 0, (size_t)N * E); /* nothing routed */
    be->build_dispatch(be, &d, z, N, E);
    check_dispatch_invariants(&d, z, N, E);
    be->dispatch_free(be, &d);
    free(z);
    etm_backend_free(be);
}
END_TEST

/* A dispatch of N tokens over E experts with random routing (some tokens unrouted). */
static uint8_t *random_mask(etm_rng *rng, int N, int E) {
    uint8_t *z = etm_malloc((size_t)N * E);
    for (int i = 0; i < N * E; i++) z[i] = etm_rng_below(rng, 3) == 0;
    return z;
}

typedef struct {
    etm_backend *be;
    const etm_dispatch *d;
    float *src, *w, *out;  /* gather: src (N,D) -> out (P,D); pairs: src (N,E) -> out (P) */
    float *ye, *gate, *y0; /* combine: ye (P,D), gate (P), y0 (N,D) */
    int D, op;             /* op 0 gather_rows, 1 gather_pairs, 2 combine */
} disp_ctx;

static double disp_loss(void *arg) {
    disp_ctx *c = arg;
    const etm_dispatch *d = c->d;
    size_t P = (size_t)d->n_pairs, N = (size_t)d->n_tokens;
    if (c->op == 0) {
        c->be->gather_rows(c->be, c->out, c->src, d->pair_token, d->n_pairs, c->D);
        return ops_dot(c->w, c->out, P * c->D);
    }
    if (c->op == 1) {
        c->be->gather_pairs(c->be, c->out, c->src, d);
        return ops_dot(c->w, c->out, P);
    }
    memcpy(c->out, c->y0, N * c->D * sizeof *c->out);
    c->be->combine_forward(c->be, c->out, c->ye, c->gate, d, c->D);
    return ops_dot(c->w, c->out, N * c->D);
}

START_TEST(gather_scatter_combine_match_loops_and_gradients) {
    etm_backend *be = ops_backend();
    etm_rng rng;
    etm_rng_seed(&rng, 44);
    const int N = 60, E = 5, D = 11;
    uint8_t *z = random_mask(&rng, N, E);
    etm_dispatch d;
    be->dispatch_alloc(be, &d, N, E);
    be->build_dispatch(be, &d, z, N, E);
    int P = d.n_pairs;
    ck_assert_int_gt(P, 0);
    float *src = ops_uniform(&rng, (size_t)N * D, -1, 1), *rows = ops_floats((size_t)P * D);
    /* gather_rows and scatter_add_rows against loops (same order of additions: exact) */
    be->gather_rows(be, rows, src, d.pair_token, P, D);
    for (int p = 0; p < P; p++)
        OPS_CHECK(
            !memcmp(rows + (size_t)p * D, src + (size_t)d.pair_token[p] * D, D * sizeof(float)));
    float *acc = ops_uniform(&rng, (size_t)N * D, -1, 1), *want = ops_copy(acc, (size_t)N * D);
    be->scatter_add_rows(be, acc, rows, &d, D);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++) {
            if (!z[n * E + e]) continue;
            int p = -1; /* the pair (n, e) */
            for (int q = d.expert_offsets[e]; q < d.expert_offsets[e + 1]; q++)
                if (d.pair_token[q] == n) p = q;
            for (int i = 0; i < D; i++) want[(size_t)n * D + i] += rows[(size_t)p * D + i];
        }
    ck_assert(!memcmp(acc, want, (size_t)N * D * sizeof(float)));
    /* gather_pairs / scatter_add_pairs against loops */
    float *x = ops_uniform(&rng, (size_t)N * E, -1, 1), *px = ops_floats(P);
    be->gather_pairs(be, px, x, &d);
    for (int p = 0; p < P; p++) OPS_CHECK((px[p]) == (x[d.pair_token[p] * E + d.pair_expert[p]]));
    float *dx = ops_uniform(&rng, (size_t)N * E, -1, 1), *dx0 = ops_copy(dx, (size_t)N * E);
    be->scatter_add_pairs(be, dx, px, &d);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            OPS_CHECK((dx[n * E + e]) ==
                      (z[n * E + e] ? dx0[n * E + e] + x[n * E + e] : dx0[n * E + e]));
    /* combine_forward against a loop in ascending expert order */
    float *ye = ops_uniform(&rng, (size_t)P * D, -1, 1), *gate = ops_uniform(&rng, P, 0, 1);
    float *y = ops_uniform(&rng, (size_t)N * D, -1, 1), *ywant = ops_copy(y, (size_t)N * D);
    be->combine_forward(be, y, ye, gate, &d, D);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++)
            for (int q = d.expert_offsets[e]; q < d.expert_offsets[e + 1]; q++)
                if (d.pair_token[q] == n)
                    for (int i = 0; i < D; i++)
                        ywant[(size_t)n * D + i] += gate[q] * ye[(size_t)q * D + i];
    ck_assert(!memcmp(y, ywant, (size_t)N * D * sizeof(float)));

    /* gradients: scatter_add_rows is gather_rows' adjoint, scatter_add_pairs gather_pairs',
     * combine_backward combine_forward's */
    disp_ctx c = {be,
                  &d,
                  src,
                  ops_uniform(&rng, (size_t)P * D, -1, 1),
                  ops_floats((size_t)N * E * D),
                  ye,
                  gate,
                  ops_uniform(&rng, (size_t)N * D, -1, 1),
                  D,
                  0};
    float *g = ops_floats((size_t)N * D);
    be->scatter_add_rows(be, g, c.w, &d, D);
    int bad = ops_grad_check("gather_rows", src, (size_t)N * D, g, disp_loss, &c, 1e-2f, 1e-3, 1e-4,
                             300, &rng);
    c.op = 1;
    c.src = x;
    memset(g, 0, (size_t)N * E * sizeof *g);
    be->scatter_add_pairs(be, g, c.w, &d);
    bad += ops_grad_check("gather_pairs", x, (size_t)N * E, g, disp_loss, &c, 1e-2f, 1e-3, 1e-4,
                          300, &rng);
    c.op = 2;
    free(c.w);
    c.w = ops_uniform(&rng, (size_t)N * D, -1, 1);
    float *dye = ops_uniform(&rng, (size_t)P * D, 5, 6), *dgate = ops_uniform(&rng, P, 5, 6);
    be->combine_backward(be, dye, dgate, c.w, ye, gate, &d, D); /* (writes) */
    bad += ops_grad_check("combine ye", ye, (size_t)P * D, dye, disp_loss, &c, 1e-2f, 1e-3, 1e-4,
                          300, &rng);
    bad +=
        ops_grad_check("combine gate", gate, P, dgate, disp_loss, &c, 1e-2f, 1e-3, 1e-4, 300, &rng);
    ck_assert_int_eq(bad, 0);
    be->dispatch_free(be, &d);
    free(z);
    free(src);
    free(rows);
    free(acc);
    free(want);
    free(x);
    free(px);
    free(dx);
    free(dx0);
    free(ye);
    free(gate);
    free(y);
    free(ywant);
    free(c.w);
    free(c.out);
    free(c.y0);
    free(g);
    free(dye);
    free(dgate);
    etm_backend_free(be);
}
END_TEST

static Suite *routing_suite(void) {
    Suite *s = suite_create("ops_routing");
    TCase *tc = tcase_create("routing");
    tcase_set_timeout(tc, 300); /* busy machines; serial-tests ignores CK_DEFAULT_TIMEOUT */
    tcase_add_test(tc, topk_rows_matches_brute_force);
    tcase_add_test(tc, select_columns_matches_brute_force);
    tcase_add_test(tc, kth_largest_columns_matches_sorting);
    tcase_add_test(tc, build_dispatch_invariants);
    tcase_add_test(tc, gather_scatter_combine_match_loops_and_gradients);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(routing_suite()); }
