/* router.c: token-choice, expert-choice and expert-threshold routing of one MoE layer (see
 * router.h for the definitions every rule shares). Tensor work goes through the backend; the
 * per-expert state and the routing statistics are computed on the host from small downloads
 * (E floats, and the (N,E) byte mask for the statistics). */
#include "router.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct etm_router {
    etm_backend *be;
    etm_router_kind kind;
    etm_score_kind score_kind; /* sigmoid for ec and et */
    etm_balance_kind balance;  /* tc only; none for ec and et */
    int E, k, seq_len, pool_seqs, max_tokens, max_pools;
    float aux_alpha, lossfree_rate, z_coef, capacity_factor, beta, et_capacity;
    int warmup_steps;

    /* backend tensors */
    float *score;         /* (max_tokens, E) gate value of every pair */
    float *prob;          /* (max_tokens, E) softmax(r) when it differs from score and is needed */
    float *dprob;         /* (max_tokens, E) switch loss with sigmoid scores: its gradient */
    float *lse;           /* (max_tokens) logsumexp of each row, when the z-loss is on */
    float *row_scale;     /* (max_tokens) z-loss gradient scale per row */
    float *selection;     /* (max_tokens, E) logits + loss-free bias (lossfree tc) */
    uint8_t *mask;        /* (max_tokens, E) the routing */
    uint8_t *mask_before; /* (max_tokens, E) top-k before capacity / threshold before clamp */
    float *cut;           /* (max_pools, E) cut-offs of one forward */
    float *threshold_dev; /* (E) c */
    float *bias_dev;      /* (E) b */
    float *vec_dev;       /* (E) per-expert loss-gradient row */

    /* host */
    uint8_t *host_mask;        /* (max_tokens, E) */
    uint8_t *host_mask_before; /* (max_tokens, E) */
    float *host_cut;           /* (max_pools, E) */
    float *host_vec;           /* (E) */
    float *threshold;          /* (E) c_i */
    float *ema;                /* (E) m_i */
    float *bias;               /* (E) b_i */
    int64_t counters[2];       /* EMA updates s, optimizer steps ended */
    double *cut_sum;           /* (E) this step's micro-batch cut-offs, summed */
    int cut_batches;           /* micro-batches in cut_sum */
    int64_t *count_sum;        /* (E) this step's top-k counts, summed (loss-free) */
    int64_t *cnt_before;       /* (E) scratch: counts of mask_before in one pool */
    int64_t *cnt_after;        /* (E) scratch: counts of mask in one pool */
    int count_batches;
    double *loss_coef;         /* (E) balance loss = sum_i loss_coef_i * P_i (kept for REPLAY) */

    /* the last forward */
    int N;        /* tokens */
    int routed;   /* a mask exists */
    float last_aux, last_z;
};

/* ---- sizes ------------------------------------------------------------------------------- */

static int pool_rows(const etm_router *rt, int N) {
    if (rt->pool_seqs <= 0) return N;
    long p = (long)rt->pool_seqs * rt->seq_len;
    if (p >= N || N % p != 0) return N;
    return (int)p;
}

static int k_target(const etm_router *rt, int pool) {
    long kt = (long)pool * rt->k / rt->E;
    if (kt < 1) kt = 1;
    if (kt > pool) kt = pool;
    return (int)kt;
}

/* ceil(cf * N k / E), with a relative slack so that a float cf such as 1.1f (1.10000002) does not
 * round an exact product up by one. */
static int tc_capacity(const etm_router *rt, int N) {
    double x = (double)rt->capacity_factor * N * rt->k / rt->E;
    long c = (long)ceil(x - 1e-6 * x);
    if (c < 1) c = 1;
    if (c > N) c = N;
    return (int)c;
}

static int uses_prob(const etm_router *rt) {
    return rt->z_coef > 0 || (rt->kind == ETM_ROUTER_TC && rt->balance == ETM_BALANCE_SWITCH);
}
static int has_balance_loss(const etm_router *rt) {
    return rt->kind == ETM_ROUTER_TC &&
           (rt->balance == ETM_BALANCE_AUX || rt->balance == ETM_BALANCE_SWITCH);
}
/* softmax(r): the scores themselves for softmax tc, else a separate buffer. */
static const float *probs(const etm_router *rt) { return rt->prob ? rt->prob : rt->score; }

/* ---- settings ----------------------------------------------------------------------------- */

int etm_router_check_hparams(const etm_hparams *hp, int tokens_per_batch, etm_error *err) {
    if (hp->router == ETM_ROUTER_DENSE) return 0;
    if (hp->router < ETM_ROUTER_DENSE || hp->router > ETM_ROUTER_ET)
        return etm_fail(err, "router: unknown kind %d", (int)hp->router);
    if (hp->n_routed < 1) return etm_fail(err, "n_routed=%d: an MoE layer needs routed experts", hp->n_routed);
    if (hp->n_shared < 0) return etm_fail(err, "n_shared=%d must be >= 0", hp->n_shared);
    if (hp->d_model < 1 || hp->expert_hidden < 1)
        return etm_fail(err, "d_model=%d, expert_hidden=%d must be positive", hp->d_model, hp->expert_hidden);
    if (hp->top_k < 1 || hp->top_k > hp->n_routed)
        return etm_fail(err, "top_k=%d must be in 1..n_routed (%d)", hp->top_k, hp->n_routed);
    if (hp->seq_len < 1) return etm_fail(err, "seq_len=%d must be positive", hp->seq_len);
    if (tokens_per_batch < 1) return etm_fail(err, "router: batch of %d tokens", tokens_per_batch);
    if (!(hp->z_loss >= 0)) return etm_fail(err, "z_loss=%g must be >= 0", hp->z_loss);
    if (hp->router == ETM_ROUTER_TC) {
        if (hp->tc_score != ETM_SCORE_SIGMOID && hp->tc_score != ETM_SCORE_SOFTMAX)
            return etm_fail(err, "tc_score: unknown kind %d", (int)hp->tc_score);
        if (hp->tc_balance < ETM_BALANCE_NONE || hp->tc_balance > ETM_BALANCE_LOSSFREE)
            return etm_fail(err, "tc_balance: unknown kind %d", (int)hp->tc_balance);
        if (!(hp->aux_alpha >= 0)) return etm_fail(err, "aux_alpha=%g must be >= 0", hp->aux_alpha);
        if (!(hp->lossfree_rate >= 0))
            return etm_fail(err, "lossfree_rate=%g must be >= 0", hp->lossfree_rate);
        if (!(hp->capacity_factor >= 0))
            return etm_fail(err, "capacity_factor=%g must be >= 0", hp->capacity_factor);
        return 0;
    }
    if (hp->pool_seqs < 0) return etm_fail(err, "pool_seqs=%d must be >= 0", hp->pool_seqs);
    long pool = tokens_per_batch;
    if (hp->pool_seqs > 0) {
        pool = (long)hp->pool_seqs * hp->seq_len;
        if (pool > tokens_per_batch || tokens_per_batch % pool != 0)
            return etm_fail(err, "pool_seqs=%d (%ld tokens) must divide the micro-batch of %d tokens",
                            hp->pool_seqs, pool, tokens_per_batch);
    }
    if (pool * hp->top_k / hp->n_routed < 1)
        return etm_fail(err, "routing pool of %ld tokens gives k_target = %ld * %d / %d < 1", pool,
                        pool, hp->top_k, hp->n_routed);
    if (!(hp->et_beta >= 0 && hp->et_beta < 1)) return etm_fail(err, "et_beta=%g must be in [0, 1)", hp->et_beta);
    if (hp->et_warmup_steps < 0)
        return etm_fail(err, "et_warmup_steps=%d must be >= 0", hp->et_warmup_steps);
    if (!(hp->et_capacity >= 0)) return etm_fail(err, "et_capacity=%g must be >= 0", hp->et_capacity);
    return 0;
}

/* ---- lifetime ----------------------------------------------------------------------------- */

etm_router *etm_router_create(etm_backend *be, const etm_hparams *hp, int max_tokens) {
    if (hp->router == ETM_ROUTER_DENSE) return NULL;
    etm_router *rt = etm_calloc(1, sizeof(*rt));
    rt->be = be;
    rt->kind = hp->router;
    rt->score_kind = hp->router == ETM_ROUTER_TC ? hp->tc_score : ETM_SCORE_SIGMOID;
    rt->balance = hp->router == ETM_ROUTER_TC ? hp->tc_balance : ETM_BALANCE_NONE;
    rt->E = hp->n_routed;
    rt->k = hp->top_k;
    rt->seq_len = hp->seq_len;
    rt->pool_seqs = hp->router == ETM_ROUTER_TC ? 0 : hp->pool_seqs;
    rt->max_tokens = max_tokens;
    rt->aux_alpha = hp->aux_alpha;
    rt->lossfree_rate = hp->lossfree_rate;
    rt->z_coef = hp->z_loss;
    rt->capacity_factor = hp->router == ETM_ROUTER_TC ? hp->capacity_factor : 0;
    rt->beta = hp->et_beta;
    rt->et_capacity = hp->router == ETM_ROUTER_ET ? hp->et_capacity : 0;
    rt->warmup_steps = hp->router == ETM_ROUTER_ET ? hp->et_warmup_steps : 0;
    rt->max_pools = 1;
    if (rt->pool_seqs > 0 && hp->seq_len > 0) {
        long p = (long)rt->pool_seqs * hp->seq_len;
        rt->max_pools = (int)ETM_MAX(1, max_tokens / p);
    }

    size_t NE = (size_t)max_tokens * rt->E, E = (size_t)rt->E;
    rt->score = be->alloc(be, NE * sizeof(float));
    if (uses_prob(rt) && rt->score_kind != ETM_SCORE_SOFTMAX) rt->prob = be->alloc(be, NE * sizeof(float));
    if (rt->balance == ETM_BALANCE_SWITCH && rt->score_kind != ETM_SCORE_SOFTMAX)
        rt->dprob = be->alloc(be, NE * sizeof(float));
    if (rt->z_coef > 0) {
        rt->lse = be->alloc(be, (size_t)max_tokens * sizeof(float));
        rt->row_scale = be->alloc(be, (size_t)max_tokens * sizeof(float));
    }
    if (rt->balance == ETM_BALANCE_LOSSFREE) rt->selection = be->alloc(be, NE * sizeof(float));
    rt->mask = be->alloc(be, NE);
    rt->mask_before = be->alloc(be, NE);
    rt->cut = be->alloc(be, (size_t)rt->max_pools * E * sizeof(float));
    rt->threshold_dev = be->alloc(be, E * sizeof(float));
    rt->bias_dev = be->alloc(be, E * sizeof(float));
    rt->vec_dev = be->alloc(be, E * sizeof(float));

    rt->host_mask = etm_calloc(NE, 1);
    rt->host_mask_before = etm_calloc(NE, 1);
    rt->host_cut = etm_calloc((size_t)rt->max_pools * E, sizeof(float));
    rt->host_vec = etm_calloc(E, sizeof(float));
    rt->threshold = etm_calloc(E, sizeof(float));
    rt->ema = etm_calloc(E, sizeof(float));
    rt->bias = etm_calloc(E, sizeof(float));
    rt->cut_sum = etm_calloc(E, sizeof(double));
    rt->count_sum = etm_calloc(E, sizeof(int64_t));
    rt->cnt_before = etm_calloc(E, sizeof(int64_t));
    rt->cnt_after = etm_calloc(E, sizeof(int64_t));
    rt->loss_coef = etm_calloc(E, sizeof(double));
    return rt;
}

void etm_router_free(etm_router *rt) {
    if (!rt) return;
    etm_backend *be = rt->be;
    float *fbufs[] = {rt->score, rt->prob, rt->dprob, rt->lse, rt->row_scale, rt->selection,
                      rt->cut, rt->threshold_dev, rt->bias_dev, rt->vec_dev};
    for (size_t i = 0; i < ETM_ARRAY_LEN(fbufs); i++)
        if (fbufs[i]) be->free(be, fbufs[i]);
    be->free(be, rt->mask);
    be->free(be, rt->mask_before);
    free(rt->host_mask);
    free(rt->host_mask_before);
    free(rt->host_cut);
    free(rt->host_vec);
    free(rt->threshold);
    free(rt->ema);
    free(rt->bias);
    free(rt->cut_sum);
    free(rt->count_sum);
    free(rt->cnt_before);
    free(rt->cnt_after);
    free(rt->loss_coef);
    free(rt);
}

/* ---- routing ------------------------------------------------------------------------------ */

etm_route_rule etm_router_rule(const etm_router *rt, etm_moe_mode mode) {
    if (rt->kind == ETM_ROUTER_TC) return ETM_RULE_TOPK;
    if (rt->counters[0] == 0) return ETM_RULE_EC; /* no threshold estimate yet */
    if (mode == ETM_MOE_EVAL) return ETM_RULE_THRESHOLD;
    if (rt->kind == ETM_ROUTER_EC) return ETM_RULE_EC;
    return rt->counters[1] < rt->warmup_steps ? ETM_RULE_EC : ETM_RULE_THRESHOLD;
}

/* Mean over pools of the k_target-th largest logit of each expert, added to this step's sum. */
static void record_cutoffs(etm_router *rt, const float *logits, int N) {
    etm_backend *be = rt->be;
    int E = rt->E, pool = pool_rows(rt, N), npools = N / pool;
    be->kth_largest_columns(be, rt->cut, logits, N, E, pool, k_target(rt, pool));
    be->download(be, rt->host_cut, rt->cut, (size_t)npools * E * sizeof(float));
    for (int e = 0; e < E; e++) {
        double s = 0;
        for (int p = 0; p < npools; p++) s += rt->host_cut[(size_t)p * E + e];
        rt->cut_sum[e] += s / npools;
    }
    rt->cut_batches++;
}

/* Counts per expert of a host mask over rows [r0, r1). */
static void column_counts(const uint8_t *m, int r0, int r1, int E, int64_t *out) {
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

/* Picks the mask; records cut-offs and loss-free counts in TRAIN; fills drops and pads and the
 * balance loss's per-expert coefficients. */
static void route(etm_router *rt, const float *logits, int N, etm_moe_mode mode, etm_moe_stats *st) {
    etm_backend *be = rt->be;
    int E = rt->E;
    size_t NE = (size_t)N * E;
    etm_route_rule rule = etm_router_rule(rt, mode);
    int pool = pool_rows(rt, N), kt = k_target(rt, pool);
    int before = 0; /* mask_before holds the unclamped selection */
    st->dropped = 0;
    st->padded = 0;

    if (rule == ETM_RULE_TOPK) {
        const float *sel = logits;
        if (rt->balance == ETM_BALANCE_LOSSFREE) {
            be->copy(be, rt->selection, logits, NE * sizeof(float));
            be->add_row_vector(be, rt->selection, rt->bias_dev, N, E);
            sel = rt->selection;
        }
        if (rt->capacity_factor > 0 && mode == ETM_MOE_TRAIN) {
            int cap = tc_capacity(rt, N);
            be->topk_rows(be, rt->mask_before, sel, N, E, rt->k);
            be->select_columns(be, rt->mask, sel, rt->mask_before, NULL, N, E, N, cap, cap);
            before = 1;
        } else {
            be->topk_rows(be, rt->mask, sel, N, E, rt->k);
        }
    } else if (rule == ETM_RULE_EC) {
        be->select_columns(be, rt->mask, logits, NULL, NULL, N, E, pool, kt, kt);
    } else if (rt->et_capacity > 0 && mode == ETM_MOE_TRAIN) {
        int lo = (int)floor((1.0 - rt->et_capacity) * kt), hi = (int)floor((1.0 + rt->et_capacity) * kt);
        lo = ETM_MAX(lo, 0);
        hi = ETM_MIN(hi, pool);
        be->select_columns(be, rt->mask_before, logits, NULL, rt->threshold_dev, N, E, N, 0, N);
        be->select_columns(be, rt->mask, logits, NULL, rt->threshold_dev, N, E, pool, lo, hi);
        before = 1;
    } else {
        be->select_columns(be, rt->mask, logits, NULL, rt->threshold_dev, N, E, N, 0, N);
    }

    if (mode == ETM_MOE_TRAIN && rt->kind != ETM_ROUTER_TC) record_cutoffs(rt, logits, N);

    be->download(be, rt->host_mask, rt->mask, NE);
    mask_stats(rt, N, st);
    if (before) be->download(be, rt->host_mask_before, rt->mask_before, NE);

    int64_t *cnt_before = rt->cnt_before, *cnt_after = rt->cnt_after;
    if (before) {
        /* per pool: the clamp and the capacity either add below the rule or remove from it */
        int prow = rule == ETM_RULE_TOPK ? N : pool;
        for (int r0 = 0; r0 < N; r0 += prow) {
            column_counts(rt->host_mask_before, r0, r0 + prow, E, cnt_before);
            column_counts(rt->host_mask, r0, r0 + prow, E, cnt_after);
            for (int e = 0; e < E; e++) {
                if (cnt_after[e] > cnt_before[e]) st->padded += (int)(cnt_after[e] - cnt_before[e]);
                else st->dropped += (int)(cnt_before[e] - cnt_after[e]);
            }
        }
    }

    if (rt->kind == ETM_ROUTER_TC) {
        /* the router's own choice: top-k counts before capacity dropping */
        column_counts(before ? rt->host_mask_before : rt->host_mask, 0, N, E, cnt_before);
        if (mode == ETM_MOE_TRAIN && rt->balance == ETM_BALANCE_LOSSFREE) {
            for (int e = 0; e < E; e++) rt->count_sum[e] += cnt_before[e];
            rt->count_batches++;
        }
        /* aux (paper): alpha * sum_i f_i P_i with f_i = count_i E / (N k), P_i = mean gate
         * score (sigmoid or softmax as configured).
         * switch: alpha * E * sum_i f_i P_i with f_i = count_i / (N k) (so sum_i f_i = 1) and
         * P_i = mean softmax(r)_i, the router probability, as in the Switch Transformer, even
         * when the gates are sigmoids. The two weightings are equal; they differ in P_i only,
         * and coincide for softmax scores. */
        for (int e = 0; e < E; e++) {
            double f = (double)cnt_before[e] / ((double)N * rt->k);
            rt->loss_coef[e] = has_balance_loss(rt) ? (double)rt->aux_alpha * E * f : 0.0;
        }
    }
}

float etm_router_forward(etm_router *rt, const float *logits, int N, etm_moe_mode mode,
                         etm_moe_stats *st) {
    etm_backend *be = rt->be;
    int E = rt->E;
    assert(N >= 1 && N <= rt->max_tokens);
    assert(mode != ETM_MOE_REPLAY || (rt->routed && rt->N == N));
    size_t NE = (size_t)N * E;

    if (rt->score_kind == ETM_SCORE_SOFTMAX) be->softmax_forward(be, rt->score, logits, N, E);
    else be->sigmoid_forward(be, rt->score, logits, NE);
    if (rt->prob) be->softmax_forward(be, rt->prob, logits, N, E);

    if (mode != ETM_MOE_REPLAY) {
        route(rt, logits, N, mode, st);
        rt->N = N;
        rt->routed = 1;
    }

    double aux = 0, zl = 0;
    if (has_balance_loss(rt)) {
        const float *p = rt->balance == ETM_BALANCE_SWITCH ? probs(rt) : rt->score;
        be->column_sum(be, rt->vec_dev, p, N, E);
        be->download(be, rt->host_vec, rt->vec_dev, (size_t)E * sizeof(float));
        for (int e = 0; e < E; e++) aux += rt->loss_coef[e] * ((double)rt->host_vec[e] / N);
    }
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

void etm_router_backward(etm_router *rt, float *dlogits, float *dscore, float loss_scale) {
    etm_backend *be = rt->be;
    int N = rt->N, E = rt->E;
    size_t NE = (size_t)N * E;
    int switch_on_prob = 0;

    if (has_balance_loss(rt)) {
        /* d loss / d score[t,i] = loss_coef_i / N for every token */
        for (int e = 0; e < E; e++) rt->host_vec[e] = (float)((double)loss_scale * rt->loss_coef[e] / N);
        be->upload(be, rt->vec_dev, rt->host_vec, (size_t)E * sizeof(float));
        if (rt->balance == ETM_BALANCE_SWITCH && rt->prob) {
            be->zero(be, rt->dprob, NE * sizeof(float));
            be->add_row_vector(be, rt->dprob, rt->vec_dev, N, E);
            switch_on_prob = 1;
        } else {
            be->add_row_vector(be, dscore, rt->vec_dev, N, E);
        }
    }
    be->zero(be, dlogits, NE * sizeof(float));
    if (rt->score_kind == ETM_SCORE_SOFTMAX) be->softmax_backward(be, dlogits, dscore, rt->score, N, E);
    else be->sigmoid_backward(be, dlogits, dscore, rt->score, NE);
    if (switch_on_prob) be->softmax_backward(be, dlogits, rt->dprob, rt->prob, N, E);
    if (rt->z_coef > 0) {
        /* d/dr[t,i] coef * mean_t lse_t^2 = 2 coef lse_t softmax(r_t)_i / N */
        be->copy(be, rt->row_scale, rt->lse, (size_t)N * sizeof(float));
        be->scale(be, rt->row_scale, (float)(2.0 * rt->z_coef * loss_scale / N), (size_t)N);
        be->add_scaled_rows(be, dlogits, rt->row_scale, probs(rt), N, E);
    }
}

/* ---- once per optimizer step ---------------------------------------------------------------- */

static void update_thresholds(etm_router *rt) {
    double beta = rt->beta;
    double bc = 1.0 - pow(beta, (double)rt->counters[0]);
    for (int e = 0; e < rt->E; e++)
        rt->threshold[e] = bc > 0 ? (float)((double)rt->ema[e] / bc) : rt->ema[e];
    rt->be->upload(rt->be, rt->threshold_dev, rt->threshold, (size_t)rt->E * sizeof(float));
}

void etm_router_step_end(etm_router *rt) {
    int E = rt->E;
    if (rt->cut_batches > 0) {
        double beta = rt->beta;
        for (int e = 0; e < E; e++) {
            double cut = rt->cut_sum[e] / rt->cut_batches;
            rt->ema[e] = (float)(beta * rt->ema[e] + (1.0 - beta) * cut);
            rt->cut_sum[e] = 0;
        }
        rt->cut_batches = 0;
        rt->counters[0]++;
        update_thresholds(rt);
    }
    if (rt->count_batches > 0) {
        int64_t total = 0;
        for (int e = 0; e < E; e++) total += rt->count_sum[e];
        for (int e = 0; e < E; e++) {
            /* sign(mean - count_i), compared in integers: count_i * E vs total */
            int64_t diff = total - rt->count_sum[e] * E;
            float sign = diff > 0 ? 1.0f : diff < 0 ? -1.0f : 0.0f;
            rt->bias[e] += rt->lossfree_rate * sign;
            rt->count_sum[e] = 0;
        }
        rt->count_batches = 0;
        rt->be->upload(rt->be, rt->bias_dev, rt->bias, (size_t)E * sizeof(float));
    }
    rt->counters[1]++;
}

/* ---- checkpoint state -------------------------------------------------------------------- */

void etm_router_get_state(const etm_router *rt, etm_router_state *out) {
    out->threshold = rt->threshold;
    out->ema = rt->ema;
    out->bias = rt->bias;
    out->counters = (int64_t *)rt->counters;
}

void etm_router_set_state(etm_router *rt, const float *threshold, const float *ema,
                          const float *bias, const int64_t *counters) {
    size_t bytes = (size_t)rt->E * sizeof(float);
    if (threshold) memcpy(rt->threshold, threshold, bytes);
    if (ema) memcpy(rt->ema, ema, bytes);
    if (bias) memcpy(rt->bias, bias, bytes);
    if (counters) memcpy(rt->counters, counters, sizeof(rt->counters));
    rt->be->upload(rt->be, rt->threshold_dev, rt->threshold, bytes);
    rt->be->upload(rt->be, rt->bias_dev, rt->bias, bytes);
    for (int e = 0; e < rt->E; e++) {
        rt->cut_sum[e] = 0;
        rt->count_sum[e] = 0;
    }
    rt->cut_batches = 0;
    rt->count_batches = 0;
}
