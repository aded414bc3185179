/* compare_ops_routing.c: the op-by-op comparison of routing decisions and of the dropless dispatch with its row and pair movements (compare_ops_case.h). */
#include <config.h>

#include "compare_ops_case.h"

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
void etm_cmp_routing(chk *c, int N, int E, int pool, int k_target, const char *tag) {
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
        etm_cmp_case(c, name, run_route, &a, 1, &mask);
        a.k = E;
        snprintf(name, sizeof name, "topk_rows k=E%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &mask);

        a.op = R_SELECT;
        a.lo = a.hi = k_target; /* expert choice */
        snprintf(name, sizeof name, "select_columns EC%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &mask);
        a.threshold = thr; /* expert threshold, unclamped and clamped */
        a.lo = 0;
        a.hi = pool;
        snprintf(name, sizeof name, "select_columns ET%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &mask);
        a.lo = k_target / 2;
        a.hi = k_target + k_target / 2;
        snprintf(name, sizeof name, "select_columns ET clamp%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &mask);
        a.eligible = elig; /* capacity over an eligibility mask, with and without threshold */
        snprintf(name, sizeof name, "select_columns eligible+thr%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &mask);
        a.threshold = NULL;
        a.lo = a.hi = k_target * 2 / 3;
        snprintf(name, sizeof name, "select_columns TC capacity%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &mask);
        a.lo = a.hi = pool; /* more than the candidates: takes them all */
        snprintf(name, sizeof name, "select_columns take all%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &mask);

        a.op = R_KTH;
        a.eligible = NULL;
        part kth = {"out", (size_t)(N / pool) * E, EXACT};
        int ks[] = {1, k_target, pool};
        for (int i = 0; i < 3; i++) {
            a.k = ks[i];
            snprintf(name, sizeof name, "kth_largest_columns k=%d%s", ks[i], t);
            etm_cmp_case(c, name, run_route, &a, 1, &kth);
        }
        a.pool_rows = N; /* one pool: the whole batch */
        a.k = k_target * 2 + 1;
        kth.n = (size_t)E;
        snprintf(name, sizeof name, "kth_largest_columns one pool%s", t);
        etm_cmp_case(c, name, run_route, &a, 1, &kth);
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
void etm_cmp_dispatch(chk *c, int N, int E, int D, const char *tag) {
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
    etm_cmp_case(c, name, run_dispatch, &a, 7, build);
    part pd = {"dst", (size_t)P * D, EXACT}, nd = {"dst (+=)", (size_t)N * D, TOL_ROUND};
    a.op = D_GATHER_ROWS;
    snprintf(name, sizeof name, "gather_rows%s", tag);
    etm_cmp_case(c, name, run_dispatch, &a, 1, &pd);
    a.op = D_SCATTER_ROWS;
    snprintf(name, sizeof name, "scatter_add_rows%s", tag);
    etm_cmp_case(c, name, run_dispatch, &a, 1, &nd);
    part pp = {"out", (size_t)P, EXACT}, ne = {"dx (+=)", (size_t)N * E, EXACT};
    a.op = D_GATHER_PAIRS;
    snprintf(name, sizeof name, "gather_pairs%s", tag);
    etm_cmp_case(c, name, run_dispatch, &a, 1, &pp);
    a.op = D_SCATTER_PAIRS;
    snprintf(name, sizeof name, "scatter_add_pairs%s", tag);
    etm_cmp_case(c, name, run_dispatch, &a, 1, &ne);
    a.op = D_COMBINE_F;
    nd.name = "y (+=)";
    snprintf(name, sizeof name, "combine_forward%s", tag);
    etm_cmp_case(c, name, run_dispatch, &a, 1, &nd);
    part cb[] = {{"dye", (size_t)P * D, TOL_ROUND}, {"dgate", (size_t)P, TOL_ROUND}};
    a.op = D_COMBINE_B;
    snprintf(name, sizeof name, "combine_backward%s", tag);
    etm_cmp_case(c, name, run_dispatch, &a, 2, cb);
    free(z);
    free((void *)a.src);
    free((void *)a.dst);
    free((void *)a.x);
    free((void *)a.gate);
    free((void *)a.dgate);
}
