/* moe.c: one Mixture-of-Experts MLP layer (moe.h): router GEMM, routing (router.h), dropless
 * dispatch, one GEMM per expert through gemm_grouped, ReLU^2, gated combine, shared experts,
 * and the mirror-image backward. Every tensor operation is a backend call. */
#include "moe.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct etm_moe_layer {
    etm_backend *be;
    etm_router *router;
    int max_tokens;
    int D, E, Hx, S;   /* width, routed experts, expert width, shared experts */
    etm_dispatch disp; /* pairs of the last routing */
    int N;             /* tokens of the last forward; 0 before the first */

    /* activations of the last forward (backend) */
    float *x;       /* (max_tokens, D) copy of the input */
    float *logits;  /* (max_tokens, E) r = x W_r^T */
    float *sh_h;    /* (S, max_tokens, Hx) shared experts' pre-activations */
    float *sh_a;    /* (S, max_tokens, Hx) relu^2 of sh_h */
    float *sh_y;    /* (max_tokens, D) sum of the shared experts' outputs, when their gate is per
                       token (softmax_e; NULL otherwise) */
    int pair_cap;   /* pairs the pair buffers hold */
    float *xg;      /* (pair_cap, D) x of each pair, grouped by expert */
    float *h;       /* (pair_cap, Hx) W_up x */
    float *a;       /* (pair_cap, Hx) relu(h)^2 */
    float *ye;      /* (pair_cap, D) expert output of each pair */
    float *gate;    /* (pair_cap) gate of each pair */

    /* backward scratch (backend) */
    int bwd_pair_cap; /* pairs the backward pair buffers hold */
    float *dye;     /* (bwd_pair_cap, D) d ye; reused for d xg */
    float *dgate;   /* (bwd_pair_cap) */
    float *da;      /* (bwd_pair_cap, Hx) */
    float *dh;      /* (bwd_pair_cap, Hx) */
    float *dscore;  /* (max_tokens, E) */
    float *dlogits; /* (max_tokens, E) */
    float *sh_da;   /* (max_tokens, Hx) one shared expert at a time */
    float *sh_dh;   /* (max_tokens, Hx) */
    float *sh_dy;   /* (max_tokens, D) dy scaled by the per-token shared gate (with sh_y) */
    float *dshared; /* (max_tokens) gradient of the per-token shared gate (with sh_y) */

    etm_gemm_group *groups; /* (E) host */
    etm_moe_stats stats;    /* arrays: expert_load (E), experts_hist (E+1) */
};

int etm_moe_check_hparams(const etm_hparams *hp, int tokens_per_batch, etm_error *err) {
    return etm_router_check_hparams(hp, tokens_per_batch, err);
}

etm_moe_layer *etm_moe_create(etm_backend *be, const etm_hparams *hp, int max_tokens) {
    if (hp->router == ETM_ROUTER_DENSE || max_tokens < 1) return NULL;
    etm_moe_layer *L = etm_calloc(1, sizeof(*L));
    L->be = be;
    L->router = etm_router_create(be, hp, max_tokens);
    L->max_tokens = max_tokens;
    L->D = hp->d_model;
    L->E = hp->n_routed;
    L->Hx = hp->expert_hidden;
    L->S = hp->n_shared;
    size_t N = (size_t)max_tokens, D = (size_t)L->D, E = (size_t)L->E, Hx = (size_t)L->Hx;
    be->dispatch_alloc(be, &L->disp, max_tokens, L->E);
    L->x = be->alloc(be, N * D * sizeof(float));
    L->logits = be->alloc(be, N * E * sizeof(float));
    if (L->S > 0) {
        L->sh_h = be->alloc(be, (size_t)L->S * N * Hx * sizeof(float));
        L->sh_a = be->alloc(be, (size_t)L->S * N * Hx * sizeof(float));
        L->sh_da = be->alloc(be, N * Hx * sizeof(float));
        L->sh_dh = be->alloc(be, N * Hx * sizeof(float));
        if (etm_router_shared_gate(L->router)) {
            L->sh_y = be->alloc(be, N * D * sizeof(float));
            L->sh_dy = be->alloc(be, N * D * sizeof(float));
            L->dshared = be->alloc(be, N * sizeof(float));
        }
    }
    L->dscore = be->alloc(be, N * E * sizeof(float));
    L->dlogits = be->alloc(be, N * E * sizeof(float));
    L->groups = etm_calloc(E, sizeof(etm_gemm_group));
    L->stats.expert_load = etm_calloc(E, sizeof(int));
    L->stats.experts_hist = etm_calloc(E + 1, sizeof(int));
    return L;
}

static void free_pair_buffers(etm_moe_layer *L) {
    etm_backend *be = L->be;
    float *fwd[] = {L->xg, L->h, L->a, L->ye, L->gate};
    for (size_t i = 0; i < ETM_ARRAY_LEN(fwd); i++)
        if (fwd[i]) be->free(be, fwd[i]);
    L->xg = L->h = L->a = L->ye = L->gate = NULL;
    L->pair_cap = 0;
}

static void free_backward_buffers(etm_moe_layer *L) {
    etm_backend *be = L->be;
    float *bwd[] = {L->dye, L->dgate, L->da, L->dh};
    for (size_t i = 0; i < ETM_ARRAY_LEN(bwd); i++)
        if (bwd[i]) be->free(be, bwd[i]);
    L->dye = L->dgate = L->da = L->dh = NULL;
    L->bwd_pair_cap = 0;
}

void etm_moe_free(etm_moe_layer *L) {
    if (!L) return;
    etm_backend *be = L->be;
    free_pair_buffers(L);
    free_backward_buffers(L);
    float *bufs[] = {L->x,     L->logits, L->sh_h,   L->sh_a,   L->sh_da, L->sh_dh,
                     L->sh_y, L->sh_dy,  L->dshared, L->dscore, L->dlogits};
    for (size_t i = 0; i < ETM_ARRAY_LEN(bufs); i++)
        if (bufs[i]) be->free(be, bufs[i]);
    be->dispatch_free(be, &L->disp);
    etm_router_free(L->router);
    free(L->groups);
    free(L->stats.expert_load);
    free(L->stats.experts_hist);
    free(L);
}

/* Capacity for P pairs: P and half again, at least half again the old capacity (at most N*E
 * pairs can exist), never shrinks. The headroom is there from the first allocation because the
 * routed count moves from step to step (ET's thresholds trail the router; expert choice's exact
 * N k pairs become ET's N k +- a few % when its warm-up ends), and every re-allocation is fresh
 * memory that the host must map again, hundreds of MB for a few layers. */
static int grown_capacity(const etm_moe_layer *L, int cap, int P) {
    long limit = (long)L->max_tokens * L->E;
    long want = ETM_MAX((long)P + P / 2, (long)cap + cap / 2);
    if (want < 64) want = 64;
    return (int)ETM_MIN(want, ETM_MAX(limit, (long)P));
}

static void ensure_pairs(etm_moe_layer *L, int P) {
    if (P <= L->pair_cap && L->xg) return;
    int cap = grown_capacity(L, L->pair_cap, P);
    free_pair_buffers(L);
    etm_backend *be = L->be;
    size_t c = (size_t)cap;
    L->xg = be->alloc(be, c * L->D * sizeof(float));
    L->h = be->alloc(be, c * L->Hx * sizeof(float));
    L->a = be->alloc(be, c * L->Hx * sizeof(float));
    L->ye = be->alloc(be, c * L->D * sizeof(float));
    L->gate = be->alloc(be, c * sizeof(float));
    L->pair_cap = cap;
}

static void ensure_backward_pairs(etm_moe_layer *L, int P) {
    if (P <= L->bwd_pair_cap && L->dye) return;
    int cap = grown_capacity(L, L->bwd_pair_cap, P);
    free_backward_buffers(L);
    etm_backend *be = L->be;
    size_t c = (size_t)cap;
    L->dye = be->alloc(be, c * L->D * sizeof(float));
    L->dgate = be->alloc(be, c * sizeof(float));
    L->da = be->alloc(be, c * L->Hx * sizeof(float));
    L->dh = be->alloc(be, c * L->Hx * sizeof(float));
    L->bwd_pair_cap = cap;
}

/* One group per expert: rows [o_e, o_e+1) of the pair-major operands; per-expert weight blocks
 * of w_block elements. pair_width_a / pair_width_c: row widths of the pair-major A and C
 * (0 when that operand is a weight block), for the offsets. */
typedef enum { GROUP_PAIRS_X_WEIGHT, GROUP_PAIRS_T_X_PAIRS } group_kind;

static void set_groups(etm_moe_layer *L, group_kind kind, int out_cols, int inner, int a_width,
                       int b_width, size_t w_block) {
    const int32_t *off = L->disp.host_expert_offsets;
    for (int e = 0; e < L->E; e++) {
        etm_gemm_group *g = &L->groups[e];
        int rows = off[e + 1] - off[e];
        if (kind == GROUP_PAIRS_X_WEIGHT) {
            /* C(rows, out_cols) = A(rows, inner) op(W_e); A and C pair-major */
            g->M = rows;
            g->N = out_cols;
            g->K = inner;
            g->a_off = (size_t)off[e] * a_width;
            g->b_off = (size_t)e * w_block;
            g->c_off = (size_t)off[e] * out_cols;
        } else {
            /* dW_e(inner, out_cols) += A(rows, inner)^T B(rows, out_cols); A and B pair-major */
            g->M = inner;
            g->N = out_cols;
            g->K = rows;
            g->a_off = (size_t)off[e] * a_width;
            g->b_off = (size_t)off[e] * b_width;
            g->c_off = (size_t)e * w_block;
        }
    }
}

float etm_moe_forward(etm_moe_layer *L, const etm_moe_weights *w, const float *x, float *y, int N,
                      etm_moe_mode mode) {
    etm_backend *be = L->be;
    int D = L->D, E = L->E, Hx = L->Hx;
    assert(N >= 1 && N <= L->max_tokens);
    assert(mode != ETM_MOE_REPLAY || N == L->N);
    size_t ND = (size_t)N * D, NH = (size_t)N * Hx, DH = (size_t)D * Hx;

    be->copy(be, L->x, x, ND * sizeof(float));
    be->gemm(be, ETM_NO_TRANS, ETM_TRANS, N, E, D, 1.0f, L->x, D, w->router, D, 0.0f, L->logits, E);
    float loss = etm_router_forward(L->router, L->logits, N, mode, &L->stats);
    if (mode != ETM_MOE_REPLAY) be->build_dispatch(be, &L->disp, etm_router_mask(L->router), N, E);
    L->N = N;

    int P = L->disp.host_expert_offsets[E];
    ensure_pairs(L, P);
    be->gather_rows(be, L->xg, L->x, L->disp.pair_token, P, D);
    /* h = xg W_up[e]^T */
    set_groups(L, GROUP_PAIRS_X_WEIGHT, Hx, D, D, 0, DH);
    be->gemm_grouped(be, ETM_NO_TRANS, ETM_TRANS, E, L->groups, 1.0f, L->xg, D, w->up, D, 0.0f, L->h, Hx);
    be->relu2_forward(be, L->a, L->h, (size_t)P * Hx);
    /* ye = a W_down[e]^T */
    set_groups(L, GROUP_PAIRS_X_WEIGHT, D, Hx, Hx, 0, DH);
    be->gemm_grouped(be, ETM_NO_TRANS, ETM_TRANS, E, L->groups, 1.0f, L->a, Hx, w->down, Hx, 0.0f, L->ye, D);
    be->gather_pairs(be, L->gate, etm_router_scores(L->router), &L->disp);

    /* shared experts, scaled by their gate (router.h): a constant c (1 unless
     * softmax_e_shared_out) folded into the GEMM, or per token (softmax_e) through sh_y */
    const float *sg = etm_router_shared_gate(L->router);
    float c = etm_router_shared_const(L->router);
    float *sy = sg ? L->sh_y : y;
    be->zero(be, y, ND * sizeof(float));
    if (sg) be->zero(be, sy, ND * sizeof(float));
    for (int s = 0; s < L->S; s++) {
        float *h = L->sh_h + (size_t)s * NH, *a = L->sh_a + (size_t)s * NH;
        be->gemm(be, ETM_NO_TRANS, ETM_TRANS, N, Hx, D, 1.0f, L->x, D, w->shared_up + (size_t)s * DH, D,
                 0.0f, h, Hx);
        be->relu2_forward(be, a, h, NH);
        be->gemm(be, ETM_NO_TRANS, ETM_TRANS, N, D, Hx, c, a, Hx, w->shared_down + (size_t)s * DH, Hx,
                 1.0f, sy, D);
    }
    if (sg && L->S > 0) be->add_scaled_rows(be, y, sg, sy, N, D);
    be->combine_forward(be, y, L->ye, L->gate, &L->disp, D);
    return loss;
}

const float *etm_moe_router_logits(etm_moe_layer *L, const etm_moe_weights *w, const float *x, int N) {
    etm_backend *be = L->be;
    assert(N >= 1 && N <= L->max_tokens);
    /* the same two operations as etm_moe_forward, on the same buffers: the same bits */
    be->copy(be, L->x, x, (size_t)N * L->D * sizeof(float));
    be->gemm(be, ETM_NO_TRANS, ETM_TRANS, N, L->E, L->D, 1.0f, L->x, L->D, w->router, L->D, 0.0f, L->logits, L->E);
    return L->logits;
}

void etm_moe_backward(etm_moe_layer *L, const etm_moe_weights *w, etm_moe_weights *dw,
                      const float *dy, float *dx, float loss_scale) {
    etm_backend *be = L->be;
    int N = L->N, D = L->D, E = L->E, Hx = L->Hx;
    assert(N > 0);
    size_t NH = (size_t)N * Hx, DH = (size_t)D * Hx;
    int P = L->disp.host_expert_offsets[E];
    ensure_backward_pairs(L, P);

    /* the shared experts see dy times their gate: c in the GEMMs, or the per-token gate in sdy;
     * the per-token gate's own gradient is <dy_t, sum_s shared_s(x_t)> */
    const float *sg = etm_router_shared_gate(L->router);
    float c = etm_router_shared_const(L->router);
    const float *sdy = dy;
    if (sg && L->S > 0) {
        be->rows_dot(be, L->dshared, dy, L->sh_y, N, D);
        be->zero(be, L->sh_dy, (size_t)N * D * sizeof(float));
        be->add_scaled_rows(be, L->sh_dy, sg, dy, N, D);
        sdy = L->sh_dy;
    }
    for (int s = 0; s < L->S; s++) {
        const float *h = L->sh_h + (size_t)s * NH, *a = L->sh_a + (size_t)s * NH;
        const float *wu = w->shared_up + (size_t)s * DH, *wd = w->shared_down + (size_t)s * DH;
        be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, N, Hx, D, c, sdy, D, wd, Hx, 0.0f, L->sh_da, Hx);
        be->gemm(be, ETM_TRANS, ETM_NO_TRANS, D, Hx, N, c, sdy, D, a, Hx, 1.0f,
                 dw->shared_down + (size_t)s * DH, Hx);
        be->zero(be, L->sh_dh, NH * sizeof(float));
        be->relu2_backward(be, L->sh_dh, L->sh_da, h, NH);
        be->gemm(be, ETM_TRANS, ETM_NO_TRANS, Hx, D, N, 1.0f, L->sh_dh, Hx, L->x, D, 1.0f,
                 dw->shared_up + (size_t)s * DH, D);
        be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, N, D, Hx, 1.0f, L->sh_dh, Hx, wu, D, 1.0f, dx, D);
    }

    be->combine_backward(be, L->dye, L->dgate, dy, L->ye, L->gate, &L->disp, D);
    /* dW_down[e] += dye^T a */
    set_groups(L, GROUP_PAIRS_T_X_PAIRS, Hx, D, D, Hx, DH);
    be->gemm_grouped(be, ETM_TRANS, ETM_NO_TRANS, E, L->groups, 1.0f, L->dye, D, L->a, Hx, 1.0f, dw->down, Hx);
    /* da = dye W_down[e] */
    set_groups(L, GROUP_PAIRS_X_WEIGHT, Hx, D, D, 0, DH);
    be->gemm_grouped(be, ETM_NO_TRANS, ETM_NO_TRANS, E, L->groups, 1.0f, L->dye, D, w->down, Hx, 0.0f, L->da, Hx);
    be->zero(be, L->dh, (size_t)P * Hx * sizeof(float));
    be->relu2_backward(be, L->dh, L->da, L->h, (size_t)P * Hx);
    /* dW_up[e] += dh^T xg */
    set_groups(L, GROUP_PAIRS_T_X_PAIRS, D, Hx, Hx, D, DH);
    be->gemm_grouped(be, ETM_TRANS, ETM_NO_TRANS, E, L->groups, 1.0f, L->dh, Hx, L->xg, D, 1.0f, dw->up, D);
    /* dxg = dh W_up[e], into dye's buffer (dye is no longer needed) */
    float *dxg = L->dye;
    set_groups(L, GROUP_PAIRS_X_WEIGHT, D, Hx, Hx, 0, DH);
    be->gemm_grouped(be, ETM_NO_TRANS, ETM_NO_TRANS, E, L->groups, 1.0f, L->dh, Hx, w->up, D, 0.0f, dxg, D);
    be->scatter_add_rows(be, dx, dxg, &L->disp, D);

    /* gates -> scores -> logits (with the aux and z terms) -> router weight and x */
    be->zero(be, L->dscore, (size_t)N * E * sizeof(float));
    be->scatter_add_pairs(be, L->dscore, L->dgate, &L->disp);
    etm_router_backward(L->router, L->dlogits, L->dscore, sg && L->S > 0 ? L->dshared : NULL, loss_scale);
    be->gemm(be, ETM_TRANS, ETM_NO_TRANS, E, D, N, 1.0f, L->dlogits, E, L->x, D, 1.0f, dw->router, D);
    be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, N, D, E, 1.0f, L->dlogits, E, w->router, D, 1.0f, dx, D);
}

void etm_moe_step_end(etm_moe_layer *L) { etm_router_step_end(L->router); }

const etm_moe_stats *etm_moe_last_stats(const etm_moe_layer *L) { return &L->stats; }

void etm_moe_down_rms(const etm_moe_layer *L, const etm_moe_weights *w, double *routed, double *shared) {
    etm_backend *be = L->be;
    const size_t n = (size_t)L->D * (size_t)L->Hx; /* one expert's down projection */
    for (int e = 0; e < L->E; e++) routed[e] = sqrt(be->sum_squares(be, w->down + (size_t)e * n, n) / (double)n);
    *shared = L->S > 0 && w->shared_down
                  ? sqrt(be->sum_squares(be, w->shared_down, (size_t)L->S * n) / ((double)L->S * (double)n))
                  : NAN;
}

const uint8_t *etm_moe_mask(const etm_moe_layer *L) { return etm_router_mask(L->router); }

const float *etm_moe_logits(const etm_moe_layer *L) { return L->logits; }

const etm_router *etm_moe_router(const etm_moe_layer *L) { return L->router; }
etm_router *etm_moe_router_mut(etm_moe_layer *L) { return L->router; }

void etm_moe_get_state(const etm_moe_layer *L, etm_router_state *out) {
    etm_router_get_state(L->router, out);
}

void etm_moe_set_state(etm_moe_layer *L, const float *threshold, const float *ema,
                       const float *bias, const int64_t *counters) {
    etm_router_set_state(L->router, threshold, ema, bias, counters);
}

void etm_moe_end_warmup(etm_moe_layer *L) { etm_router_end_warmup(L->router); }
