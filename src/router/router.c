/* router.c: the table of router kinds and what every kind shares (router.h for the
 * definitions): settings checks common to all, the routing sizes, the gate scores, the mask
 * statistics, the z-loss, the backward pass through the scores, the step count and the saved
 * state. The rules themselves are in router_tc.c, router_ec.c and router_et.c (router_kind.h).
 * Tensor work goes through the backend; the statistics are computed on the host from the
 * downloaded (N,E) byte mask. */
#include "router_kind.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One row per kind, indexed by etm_router_kind; dense has none (no router). */
static const etm_router_ops *const kinds[ETM_ROUTER_N_KINDS] = {
    [ETM_ROUTER_DENSE] = NULL,
    [ETM_ROUTER_TC] = &etm_router_tc_ops,
    [ETM_ROUTER_EC] = &etm_router_ec_ops,
    [ETM_ROUTER_ET] = &etm_router_et_ops,
};

const etm_router_ops *etm_router_ops_of(etm_router_kind k) {
    return (int)k >= 0 && k < ETM_ROUTER_N_KINDS ? kinds[k] : NULL;
}
#define ops_of etm_router_ops_of

/* ---- sizes -------------------------------------------------------------------------------- */

etm_routing_sizes etm_router_sizes(const etm_hparams *hp, int N) {
    etm_routing_sizes s = {N, 1, 1, 0, 0, N, 1};
    int E = hp->n_routed;
    if (N < 1 || E < 1) return s;
    if (hp->router != ETM_ROUTER_TC && hp->pool_seqs > 0) {
        long p = (long)hp->pool_seqs * hp->seq_len;
        if (p < N && N % p == 0) s.pool = (int)p;
    }
    s.n_pools = N / s.pool;
    long kt = (long)s.pool * hp->top_k / E;
    s.k_target = (int)ETM_MIN(ETM_MAX(kt, 1), s.pool);
    long kb = (long)N * hp->top_k / E;
    s.k_batch = (int)ETM_MIN(ETM_MAX(kb, 1), N);
    if (hp->router == ETM_ROUTER_TC && hp->capacity_factor > 0) {
        /* ceil(cf N k / E), with a relative slack so that a float cf such as 1.1f (1.10000002)
         * does not round an exact product up by one */
        double x = (double)hp->capacity_factor * N * hp->top_k / E;
        long c = (long)ceil(x - 1e-6 * x);
        s.capacity = (int)ETM_MIN(ETM_MAX(c, 1), N);
    }
    s.clamp_hi = s.pool;
    if (etm_router_et_clamps(hp)) {
        s.clamp_lo = ETM_MAX((int)floor((1.0 - hp->et_capacity) * s.k_target), 0);
        s.clamp_hi = ETM_MIN((int)floor((1.0 + hp->et_capacity) * s.k_target), s.pool);
    }
    return s;
}

int etm_router_et_clamps(const etm_hparams *hp) {
    return hp->router == ETM_ROUTER_ET && (hp->et_capacity > 0 || hp->et_capacity_mode == ETM_CLAMP_ALWAYS);
}

/* ---- settings ----------------------------------------------------------------------------- */

int etm_router_check_hparams(const etm_hparams *hp, int tokens_per_batch, etm_error *err) {
    if (hp->router == ETM_ROUTER_DENSE) return 0;
    const etm_router_ops *o = ops_of(hp->router);
    if (!o) return etm_fail(err, "router: unknown kind %d", (int)hp->router);
    if (hp->n_routed < 1) return etm_fail(err, "n_routed=%d: an MoE layer needs routed experts", hp->n_routed);
    if (hp->n_shared < 0) return etm_fail(err, "n_shared=%d must be >= 0", hp->n_shared);
    if (hp->d_model < 1 || hp->expert_hidden < 1)
        return etm_fail(err, "d_model=%d, expert_hidden=%d must be positive", hp->d_model, hp->expert_hidden);
    if (hp->top_k < 1 || hp->top_k > hp->n_routed)
        return etm_fail(err, "top_k=%d must be in 1..n_routed (%d)", hp->top_k, hp->n_routed);
    if (hp->seq_len < 1) return etm_fail(err, "seq_len=%d must be positive", hp->seq_len);
    if (tokens_per_batch < 1) return etm_fail(err, "router: batch of %d tokens", tokens_per_batch);
    if (!(hp->z_loss >= 0)) return etm_fail(err, "z_loss=%g must be >= 0", hp->z_loss);
    if (hp->router_activation < ETM_GATE_SIGMOID || hp->router_activation > ETM_GATE_SOFTMAX_K)
        return etm_fail(err, "router_activation: unknown gate function %d", (int)hp->router_activation);
    if (hp->router == ETM_ROUTER_TC && hp->router_activation != ETM_GATE_SIGMOID &&
        !(hp->router_activation == ETM_GATE_RELU && hp->tc_score == ETM_SCORE_SIGMOID))
        return etm_fail(err, "router_activation: tc takes sigmoid (tc_score decides) or relu with "
                             "tc_score = sigmoid");
    if (hp->router_activation == ETM_GATE_SOFTMAX_E_SHARED_OUT && hp->n_shared > 0 &&
        !(hp->ffn_hidden > 0 && hp->expert_hidden > 0))
        return etm_fail(err, "router_activation = softmax_e_shared_out: the shared gate 1 / G needs "
                             "ffn_hidden and expert_hidden > 0");
    return o->check(hp, tokens_per_batch, err);
}

/* ---- lifetime ----------------------------------------------------------------------------- */

etm_router *etm_router_create(etm_backend *be, const etm_hparams *hp, int max_tokens) {
    const etm_router_ops *o = ops_of(hp->router);
    if (!o) return NULL;
    etm_router *rt = etm_calloc(1, sizeof(*rt));
    rt->ops = o;
    rt->be = be;
    rt->hp = *hp;
    rt->E = hp->n_routed;
    rt->k = hp->top_k;
    rt->max_tokens = max_tokens;
    rt->score_kind = ETM_SCORE_SIGMOID;
    rt->z_coef = hp->z_loss;
    rt->gate = hp->router_activation;
    /* the authors' softmax_e_shared_out: shared gate 1 / G, G = dff / d_expert their granularity
     * (router_utils.py:55, model_base.py:36-39) */
    rt->shared_const = rt->gate == ETM_GATE_SOFTMAX_E_SHARED_OUT && hp->n_shared > 0
                           ? (float)((double)hp->expert_hidden / hp->ffn_hidden)
                           : 1.0f;
    o->create(rt);

    size_t NE = (size_t)max_tokens * rt->E, E = (size_t)rt->E;
    rt->score = be->alloc(be, NE * sizeof(float));
    if ((rt->z_coef > 0 || rt->want_prob) && rt->score_kind != ETM_SCORE_SOFTMAX)
        rt->prob = be->alloc(be, NE * sizeof(float));
    if (rt->gate == ETM_GATE_SOFTMAX_E && hp->n_shared > 0)
        rt->shared_gate = be->alloc(be, (size_t)max_tokens * sizeof(float));
    if (rt->z_coef > 0) {
        rt->lse = be->alloc(be, (size_t)max_tokens * sizeof(float));
        rt->row_scale = be->alloc(be, (size_t)max_tokens * sizeof(float));
    }
    rt->mask = be->alloc(be, NE);
    rt->mask_before = be->alloc(be, NE);
    rt->host_mask = etm_calloc(NE, 1);
    rt->host_mask_before = etm_calloc(NE, 1);
    rt->cnt_before = etm_calloc(E, sizeof(int64_t));
    rt->cnt_after = etm_calloc(E, sizeof(int64_t));
    rt->host_score = etm_calloc(NE, sizeof(float));
    rt->host_logits = etm_calloc(NE, sizeof(float));
    rt->zeros = etm_calloc(E, sizeof(float));
    return rt;
}

void etm_router_free(etm_router *rt) {
    if (!rt) return;
    etm_backend *be = rt->be;
    rt->ops->destroy(rt);
    float *fbufs[] = {rt->score, rt->prob, rt->shared_gate, rt->lse, rt->row_scale};
    for (size_t i = 0; i < ETM_ARRAY_LEN(fbufs); i++)
        if (fbufs[i]) be->free(be, fbufs[i]);
    be->free(be, rt->mask);
    be->free(be, rt->mask_before);
    free(rt->host_mask);
    free(rt->host_mask_before);
    free(rt->cnt_before);
    free(rt->cnt_after);
    free(rt->host_score);
    free(rt->host_logits);
    free(rt->zeros);
    free(rt->rec);
    free(rt);
}

/* ---- routing ------------------------------------------------------------------------------ */

etm_route_rule etm_router_rule(const etm_router *rt, etm_moe_mode mode) { return rt->ops->rule(rt, mode); }

void etm_router_column_counts(const uint8_t *m, int r0, int r1, int E, int64_t *out) {
    for (int e = 0; e < E; e++) out[e] = 0;
    for (int t = r0; t < r1; t++)
        for (int e = 0; e < E; e++) out[e] += m[(size_t)t * E + e] != 0;
}

/* Load, experts-per-token histogram and pairs, from the downloaded final mask. */
static void mask_stats(const etm_router *rt, int N, etm_moe_stats *st) {
    int E = rt->E;
    for (int e = 0; e < E; e++) st->expert_load[e] = 0;
    for (int c = 0; c <= E; c++) st->experts_hist[c] = 0;
    long pairs = 0;
    for (int t = 0; t < N; t++) {
        int c = 0;
        for (int e = 0; e < E; e++) {
            int on = rt->host_mask[(size_t)t * E + e] != 0;
            c += on;
            st->expert_load[e] += on;
        }
        st->experts_hist[c]++;
        pairs += c;
    }
    st->n_tokens = N;
    st->n_pairs = (int)pairs;
    st->tokens_no_expert = st->experts_hist[0];
    st->mean_experts = N > 0 ? (float)((double)pairs / N) : 0.0f;
}

/* Sums of the routed gates and of all logits (the gate and logit statistics of
 * routing_metrics.h), from the downloaded scores and logits, in token order. */
static void value_sums(etm_router *rt, const float *logits, int N, etm_moe_stats *st) {
    size_t NE = (size_t)N * rt->E;
    rt->be->download(rt->be, rt->host_score, rt->score, NE * sizeof(float));
    rt->be->download(rt->be, rt->host_logits, logits, NE * sizeof(float));
    double gs = 0, gq = 0, ls = 0, lq = 0;
    for (size_t i = 0; i < NE; i++) {
        double r = rt->host_logits[i];
        ls += r;
        lq += r * r;
        if (rt->host_mask[i]) {
            double g = rt->host_score[i];
            gs += g;
            gq += g * g;
        }
    }
    st->gate_sum = gs;
    st->gate_sq = gq;
    st->logit_sum = ls;
    st->logit_sq = lq;
}

/* The kind picks the mask; then the shared statistics, and the pairs a capacity or clamp
 * removed below (dropped) or added beyond (padded) the rule, per group of rows, and how many
 * (group, expert) counts of the rule lay outside the bounds (the authors' capacity overflow and
 * underflow: above_counts > k_max, < k_min, routing_metrics.py). */
static void route(etm_router *rt, const float *logits, int N, etm_moe_mode mode, etm_moe_stats *st) {
    etm_backend *be = rt->be;
    int E = rt->E, prow = N;
    size_t NE = (size_t)N * E;
    st->dropped = 0;
    st->padded = 0;
    st->cap_groups = st->cap_over = st->cap_under = 0;
    int before = rt->ops->route(rt, logits, N, mode, &prow);

    be->download(be, rt->host_mask, rt->mask, NE);
    mask_stats(rt, N, st);
    value_sums(rt, logits, N, st);
    if (before) {
        /* the bounds: tc's capacity (no lower bound), or the et clamp's [lo, hi] per pool */
        etm_routing_sizes sz = etm_router_sizes(&rt->hp, N);
        int64_t hi = sz.capacity > 0 ? sz.capacity : sz.clamp_hi, lo = sz.clamp_lo;
        be->download(be, rt->host_mask_before, rt->mask_before, NE);
        for (int r0 = 0; r0 < N; r0 += prow) {
            etm_router_column_counts(rt->host_mask_before, r0, r0 + prow, E, rt->cnt_before);
            etm_router_column_counts(rt->host_mask, r0, r0 + prow, E, rt->cnt_after);
            for (int e = 0; e < E; e++) {
                int64_t b = rt->cnt_before[e], a = rt->cnt_after[e];
                if (a > b) st->padded += (int)(a - b);
                else st->dropped += (int)(b - a);
                st->cap_groups++;
                st->cap_over += b > hi;
                st->cap_under += b < lo;
            }
        }
    }
    if (rt->ops->routed) rt->ops->routed(rt, N, mode, before);
}

/* The backend gate op of a gate function other than sigmoid (tc's scores: tc_score); 0 for
 * sigmoid, which keeps sigmoid_forward (and tc_score's softmax_forward) unchanged. */
static int gate_op(const etm_router *rt, etm_gate_op *op) {
    switch (rt->gate) {
    case ETM_GATE_RELU: *op = ETM_GATE_OP_RELU; return 1;
    case ETM_GATE_SOFTMAX_E:
    case ETM_GATE_SOFTMAX_E_SHARED_OUT: *op = ETM_GATE_OP_SOFTMAX_ANCHOR; return 1;
    case ETM_GATE_SOFTMAX_K: *op = ETM_GATE_OP_SOFTMAX_COLUMNS; return 1;
    default: return 0;
    }
}

float etm_router_forward(etm_router *rt, const float *logits, int N, etm_moe_mode mode,
                         etm_moe_stats *st) {
    etm_backend *be = rt->be;
    int E = rt->E;
    assert(N >= 1 && N <= rt->max_tokens);
    assert(mode != ETM_MOE_REPLAY || (rt->routed && rt->N == N));
    size_t NE = (size_t)N * E;

    etm_gate_op op;
    if (gate_op(rt, &op)) be->gate_forward(be, op, rt->score, rt->shared_gate, logits, N, E);
    else if (rt->score_kind == ETM_SCORE_SOFTMAX) be->softmax_forward(be, rt->score, logits, N, E);
    else be->sigmoid_forward(be, rt->score, logits, NE);
    if (rt->prob) be->softmax_forward(be, rt->prob, logits, N, E);

    if (mode != ETM_MOE_REPLAY) {
        route(rt, logits, N, mode, st);
        rt->N = N;
        rt->routed = 1;
    }

    double aux = rt->ops->loss ? rt->ops->loss(rt, N) : 0, zl = 0;
    if (rt->z_coef > 0) {
        be->logsumexp_rows(be, rt->lse, logits, N, E);
        zl = (double)rt->z_coef * be->sum_squares(be, rt->lse, (size_t)N) / N;
    }
    rt->last_aux = (float)aux;
    rt->last_z = (float)zl;
    st->aux_loss = rt->last_aux;
    st->z_loss = rt->last_z;
    return (float)(aux + zl);
}

const uint8_t *etm_router_mask(const etm_router *rt) { return rt->mask; }
const float *etm_router_scores(const etm_router *rt) { return rt->score; }
const float *etm_router_shared_gate(const etm_router *rt) { return rt->shared_gate; }
float etm_router_shared_const(const etm_router *rt) { return rt->shared_const; }

void etm_router_backward(etm_router *rt, float *dlogits, float *dscore, const float *dshared,
                         float loss_scale) {
    etm_backend *be = rt->be;
    int N = rt->N, E = rt->E;
    size_t NE = (size_t)N * E;

    if (rt->ops->loss_backward_scores) rt->ops->loss_backward_scores(rt, dscore, loss_scale);
    be->zero(be, dlogits, NE * sizeof(float));
    etm_gate_op op;
    if (gate_op(rt, &op))
        be->gate_backward(be, op, dlogits, dscore, rt->shared_gate ? dshared : NULL, rt->score,
                          rt->shared_gate, N, E);
    else if (rt->score_kind == ETM_SCORE_SOFTMAX) be->softmax_backward(be, dlogits, dscore, rt->score, N, E);
    else be->sigmoid_backward(be, dlogits, dscore, rt->score, NE);
    if (rt->ops->loss_backward_logits) rt->ops->loss_backward_logits(rt, dlogits);
    if (rt->z_coef > 0) {
        /* d/dr[t,i] coef * mean_t lse_t^2 = 2 coef lse_t softmax(r_t)_i / N */
        be->copy(be, rt->row_scale, rt->lse, (size_t)N * sizeof(float));
        be->scale(be, rt->row_scale, (float)(2.0 * rt->z_coef * loss_scale / N), (size_t)N);
        be->add_scaled_rows(be, dlogits, rt->row_scale, rt->prob ? rt->prob : rt->score, N, E);
    }
}

/* ---- once per optimizer step ---------------------------------------------------------------- */

double *etm_router_new_record(etm_router *rt) {
    if (rt->n_rec == rt->cap_rec) {
        rt->cap_rec = rt->cap_rec ? 2 * rt->cap_rec : 8;
        rt->rec = etm_realloc(rt->rec, (size_t)rt->cap_rec * rt->E * sizeof(double));
    }
    return rt->rec + (size_t)rt->n_rec++ * rt->E;
}

int etm_router_step_records(const etm_router *rt, const double **rec) {
    *rec = rt->rec;
    return rt->n_rec;
}

void etm_router_set_step_records(etm_router *rt, const double *rec, int n) {
    rt->n_rec = 0;
    for (int i = 0; i < n; i++) memcpy(etm_router_new_record(rt), rec + (size_t)i * rt->E, (size_t)rt->E * sizeof(double));
    if (rt->ops->resum) rt->ops->resum(rt);
}

size_t etm_router_step_logits(const etm_router *rt, const float **logits) {
    const etm_cutoff_state *cs = rt->ops->cutoff ? rt->ops->cutoff(rt) : NULL;
    *logits = cs ? cs->step_logits : NULL;
    return cs && cs->scope == ETM_CUTOFF_STEP ? cs->step_rows : 0;
}

void etm_router_set_step_logits(etm_router *rt, const float *logits, size_t rows, int n_forwards) {
    /* the state belongs to rt, which is not const here: ops->cutoff only returns it read-only */
    etm_cutoff_state *cs = rt->ops->cutoff ? (etm_cutoff_state *)rt->ops->cutoff(rt) : NULL;
    if (!cs || cs->scope != ETM_CUTOFF_STEP) return;
    etm_cutoff_set_step_logits(cs, rt, logits, rows, n_forwards);
}

void etm_router_step_end(etm_router *rt) {
    rt->n_rec = 0;
    if (rt->ops->step_end) rt->ops->step_end(rt);
    rt->counters[1]++;
}

void etm_router_use_mask(etm_router *rt, const uint8_t *host_mask, int N, int record) {
    assert(N >= 1 && N <= rt->max_tokens);
    rt->preset = host_mask;
    rt->preset_N = N;
    rt->preset_record = record;
}

void etm_router_end_warmup(etm_router *rt) {
    if (rt->hp.router == ETM_ROUTER_ET && rt->counters[1] < rt->hp.et_warmup_steps)
        rt->counters[1] = rt->hp.et_warmup_steps;
}

int etm_router_last_cutoff(const etm_router *rt, etm_cutoff_step_info *out) {
    const etm_cutoff_state *cs = rt->ops->cutoff ? rt->ops->cutoff(rt) : NULL;
    if (!cs || !cs->has_last) return 0;
    out->cut = cs->last_cut;
    out->gap = cs->last_gap;
    return 1;
}

/* ---- checkpoint state -------------------------------------------------------------------- */

void etm_router_get_state(const etm_router *rt, etm_router_state *out) {
    out->threshold = out->ema = out->bias = NULL;
    rt->ops->get_state(rt, out);
    if (!out->threshold) out->threshold = rt->zeros;
    if (!out->ema) out->ema = rt->zeros;
    if (!out->bias) out->bias = rt->zeros;
    out->counters = (int64_t *)rt->counters;
}

void etm_router_set_state(etm_router *rt, const float *threshold, const float *ema,
                          const float *bias, const int64_t *counters) {
    rt->n_rec = 0;
    if (counters) memcpy(rt->counters, counters, sizeof(rt->counters));
    rt->ops->set_state(rt, threshold, ema, bias);
}
