/* router_tc.c: token choice (router.h): each token takes its top-k experts by logit (plus the
 * loss-free bias), sigmoid or softmax gates, the aux / switch / aux_error balance losses, loss-free bias
 * updates, and capacity dropping in TRAIN. */
#include "router_kind.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    etm_balance_kind balance;
    float aux_alpha, lossfree_rate, capacity_factor;
    float *dprob;        /* (max_tokens, E) backend: switch loss with sigmoid scores: its gradient */
    float *selection;    /* (max_tokens, E) backend: logits + loss-free bias (lossfree) */
    float *bias_dev;     /* (E) backend: b */
    float *vec_dev;      /* (E) backend: per-expert loss-gradient row */
    float *host_vec;     /* (E) */
    float *bias;         /* (E) b_i */
    int64_t *count_sum;  /* (E) this step's top-k counts, summed (loss-free) */
    int count_batches;
    double *loss_coef;   /* (E) balance loss = sum_i loss_coef_i * P_i (kept for REPLAY) */
} tc_state;

static int tc_check(const etm_hparams *hp, int tokens_per_batch, etm_error *err) {
    (void)tokens_per_batch;
    if (hp->tc_score != ETM_SCORE_SIGMOID && hp->tc_score != ETM_SCORE_SOFTMAX)
        return etm_fail(err, "tc_score: unknown kind %d", (int)hp->tc_score);
    if (hp->tc_balance < ETM_BALANCE_NONE || hp->tc_balance > ETM_BALANCE_AUX_ERROR)
        return etm_fail(err, "tc_balance: unknown kind %d", (int)hp->tc_balance);
    if (!(hp->aux_alpha >= 0)) return etm_fail(err, "aux_alpha=%g must be >= 0", hp->aux_alpha);
    if (!(hp->lossfree_rate >= 0))
        return etm_fail(err, "lossfree_rate=%g must be >= 0", hp->lossfree_rate);
    if (!(hp->capacity_factor >= 0))
        return etm_fail(err, "capacity_factor=%g must be >= 0", hp->capacity_factor);
    return 0;
}

/* The balance losses as one formula, alpha * sum_i (E f_i + shift) P_i with f_i = count_i / (N k)
 * (router.h), one row per balance kind. */
static const struct {
    int loss;      /* the kind has a loss (lossfree and none balance otherwise or not at all) */
    int on_prob;   /* P_i is the mean softmax(r)_i whatever the gates (switch) */
    double shift;  /* added to E f_i: -1 for aux_error, the authors' f_i - 1 */
} balance_rules[] = {
    [ETM_BALANCE_NONE] = {0, 0, 0.0},
    [ETM_BALANCE_AUX] = {1, 0, 0.0},
    [ETM_BALANCE_SWITCH] = {1, 1, 0.0},
    [ETM_BALANCE_LOSSFREE] = {0, 0, 0.0},
    [ETM_BALANCE_AUX_ERROR] = {1, 0, -1.0},
};
typedef char balance_rules_cover_kinds[ETM_ARRAY_LEN(balance_rules) == ETM_BALANCE_AUX_ERROR + 1 ? 1 : -1];

static int has_balance_loss(const tc_state *s) { return balance_rules[s->balance].loss; }

static void tc_create(etm_router *rt) {
    etm_backend *be = rt->be;
    tc_state *s = etm_calloc(1, sizeof(*s));
    size_t NE = (size_t)rt->max_tokens * rt->E, E = (size_t)rt->E;
    rt->score_kind = rt->hp.tc_score;
    s->balance = rt->hp.tc_balance;
    s->aux_alpha = rt->hp.aux_alpha;
    s->lossfree_rate = rt->hp.lossfree_rate;
    s->capacity_factor = rt->hp.capacity_factor;
    rt->want_prob = balance_rules[s->balance].on_prob;
    if (balance_rules[s->balance].on_prob && rt->score_kind != ETM_SCORE_SOFTMAX)
        s->dprob = be->alloc(be, NE * sizeof(float));
    if (s->balance == ETM_BALANCE_LOSSFREE) s->selection = be->alloc(be, NE * sizeof(float));
    s->bias_dev = be->alloc(be, E * sizeof(float));
    s->vec_dev = be->alloc(be, E * sizeof(float));
    s->host_vec = etm_calloc(E, sizeof(float));
    s->bias = etm_calloc(E, sizeof(float));
    s->count_sum = etm_calloc(E, sizeof(int64_t));
    s->loss_coef = etm_calloc(E, sizeof(double));
    rt->state = s;
}

static void tc_destroy(etm_router *rt) {
    etm_backend *be = rt->be;
    tc_state *s = rt->state;
    float *bufs[] = {s->dprob, s->selection, s->bias_dev, s->vec_dev};
    for (size_t i = 0; i < ETM_ARRAY_LEN(bufs); i++)
        if (bufs[i]) be->free(be, bufs[i]);
    free(s->host_vec);
    free(s->bias);
    free(s->count_sum);
    free(s->loss_coef);
    free(s);
}

static etm_route_rule tc_rule(const etm_router *rt, etm_moe_mode mode) {
    (void)rt;
    (void)mode;
    return ETM_RULE_TOPK;
}

static int tc_route(etm_router *rt, const float *logits, int N, etm_moe_mode mode, int *pool_rows) {
    etm_backend *be = rt->be;
    tc_state *s = rt->state;
    int E = rt->E;
    const float *sel = logits;
    *pool_rows = N;
    if (s->balance == ETM_BALANCE_LOSSFREE) {
        be->copy(be, s->selection, logits, (size_t)N * E * sizeof(float));
        be->add_row_vector(be, s->selection, s->bias_dev, N, E);
        sel = s->selection;
    }
    if (s->capacity_factor > 0 && mode == ETM_MOE_TRAIN) {
        int cap = etm_router_sizes(&rt->hp, N).capacity;
        be->topk_rows(be, rt->mask_before, sel, N, E, rt->k);
        /* the overflow goes by gate score: softmax gates are not ordered by logit across tokens
         * (a row's softmax ignores a shift of all its logits); sigmoid gates are, and keep the
         * selection order (logit plus loss-free bias) */
        const float *rank = rt->score_kind == ETM_SCORE_SOFTMAX ? rt->score : sel;
        be->select_columns(be, rt->mask, rank, rt->mask_before, NULL, N, E, N, cap, cap);
        return 1;
    }
    be->topk_rows(be, rt->mask, sel, N, E, rt->k);
    return 0;
}

/* The router's own choice, top-k counts before capacity dropping: loss-free counts and the
 * balance loss's per-expert coefficients.
 * aux (paper): alpha * sum_i f_i P_i with f_i = count_i E / (N k), P_i = mean gate score
 * (sigmoid or softmax as configured).
 * switch: alpha * E * sum_i f_i P_i with f_i = count_i / (N k) (so sum_i f_i = 1) and P_i = mean
 * softmax(r)_i, the router probability, as in the Switch Transformer, even when the gates are
 * sigmoids. The two weightings are equal; they differ in P_i only, and coincide for softmax
 * scores.
 * aux_error (the authors' third loss, token_choice.py _add_aux_loss): alpha * sum_i (E f_i - 1) P_i
 * with aux's P_i: the load's error from its target; it can be negative, and its -1 term pulls every
 * gate up by alpha / N per token. */
static void tc_routed(etm_router *rt, int N, etm_moe_mode mode, int before) {
    tc_state *s = rt->state;
    int E = rt->E;
    int64_t *cnt = rt->cnt_before;
    etm_router_column_counts(before ? rt->host_mask_before : rt->host_mask, 0, N, E, cnt);
    if (mode == ETM_MOE_TRAIN && s->balance == ETM_BALANCE_LOSSFREE) {
        double *rec = etm_router_new_record(rt);
        for (int e = 0; e < E; e++) {
            s->count_sum[e] += cnt[e];
            rec[e] = (double)cnt[e]; /* exact: a count is at most max_tokens */
        }
        s->count_batches++;
    }
    for (int e = 0; e < E; e++) {
        double f = (double)cnt[e] / ((double)N * rt->k);
        /* alpha E f + alpha shift: exactly the aux coefficient when the shift is 0 */
        s->loss_coef[e] = has_balance_loss(s)
                              ? (double)s->aux_alpha * E * f + (double)s->aux_alpha * balance_rules[s->balance].shift
                              : 0.0;
    }
}

static double tc_loss(etm_router *rt, int N) {
    etm_backend *be = rt->be;
    tc_state *s = rt->state;
    int E = rt->E;
    double aux = 0;
    if (!has_balance_loss(s)) return 0;
    const float *p = balance_rules[s->balance].on_prob ? (rt->prob ? rt->prob : rt->score) : rt->score;
    be->column_sum(be, s->vec_dev, p, N, E);
    be->download(be, s->host_vec, s->vec_dev, (size_t)E * sizeof(float));
    for (int e = 0; e < E; e++) aux += s->loss_coef[e] * ((double)s->host_vec[e] / N);
    return aux;
}

static void tc_loss_backward_scores(etm_router *rt, float *dscore, float loss_scale) {
    etm_backend *be = rt->be;
    tc_state *s = rt->state;
    int N = rt->N, E = rt->E;
    if (!has_balance_loss(s)) return;
    /* d loss / d score[t,i] = loss_coef_i / N for every token */
    for (int e = 0; e < E; e++) s->host_vec[e] = (float)((double)loss_scale * s->loss_coef[e] / N);
    be->upload(be, s->vec_dev, s->host_vec, (size_t)E * sizeof(float));
    if (s->dprob) {
        /* switch with sigmoid gates: the loss is on softmax(r), not on the scores */
        be->zero(be, s->dprob, (size_t)N * E * sizeof(float));
        be->add_row_vector(be, s->dprob, s->vec_dev, N, E);
    } else {
        be->add_row_vector(be, dscore, s->vec_dev, N, E);
    }
}

static void tc_loss_backward_logits(etm_router *rt, float *dlogits) {
    tc_state *s = rt->state;
    if (has_balance_loss(s) && s->dprob) rt->be->softmax_backward(rt->be, dlogits, s->dprob, rt->prob, rt->N, rt->E);
}

static void tc_step_end(etm_router *rt) {
    tc_state *s = rt->state;
    int E = rt->E;
    if (s->count_batches == 0) return;
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += s->count_sum[e];
    for (int e = 0; e < E; e++) {
        /* sign(mean - count_i), compared in integers: count_i * E vs total */
        int64_t diff = total - s->count_sum[e] * E;
        float sign = diff > 0 ? 1.0f : diff < 0 ? -1.0f : 0.0f;
        s->bias[e] += s->lossfree_rate * sign;
        s->count_sum[e] = 0;
    }
    s->count_batches = 0;
    rt->be->upload(rt->be, s->bias_dev, s->bias, (size_t)E * sizeof(float));
}

/* The loss-free counts of the records (integers, so any order gives the same sums). */
static void tc_resum(etm_router *rt) {
    tc_state *s = rt->state;
    for (int e = 0; e < rt->E; e++) s->count_sum[e] = 0;
    for (int b = 0; b < rt->n_rec; b++)
        for (int e = 0; e < rt->E; e++) s->count_sum[e] += (int64_t)rt->rec[(size_t)b * rt->E + e];
    s->count_batches = rt->n_rec;
}

static void tc_get_state(const etm_router *rt, etm_router_state *out) {
    out->bias = ((const tc_state *)rt->state)->bias;
}

static void tc_set_state(etm_router *rt, const float *threshold, const float *ema, const float *bias) {
    tc_state *s = rt->state;
    size_t bytes = (size_t)rt->E * sizeof(float);
    (void)threshold;
    (void)ema;
    if (bias) memcpy(s->bias, bias, bytes);
    rt->be->upload(rt->be, s->bias_dev, s->bias, bytes);
    for (int e = 0; e < rt->E; e++) s->count_sum[e] = 0;
    s->count_batches = 0;
}

const etm_router_ops etm_router_tc_ops = {
    .kind = ETM_ROUTER_TC,
    .name = "tc",
    .check = tc_check,
    .create = tc_create,
    .destroy = tc_destroy,
    .rule = tc_rule,
    .route = tc_route,
    .routed = tc_routed,
    .loss = tc_loss,
    .loss_backward_scores = tc_loss_backward_scores,
    .loss_backward_logits = tc_loss_backward_logits,
    .step_end = tc_step_end,
    .resum = tc_resum,
    .get_state = tc_get_state,
    .set_state = tc_set_state,
};
