/* router_cutoff.c: the per-expert cut-off EMA and thresholds that expert choice (router_ec.c)
 * and expert threshold (router_et.c) share (router.h: cut-off, EMA, bias correction, s == 0). */
#include "router_kind.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int etm_cutoff_check(const etm_hparams *hp, int tokens_per_batch, etm_error *err) {
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
    if (hp->ema_start_steps < 0) return etm_fail(err, "ema_start_steps=%d must be >= 0", hp->ema_start_steps);
    return 0;
}

void etm_cutoff_init(etm_cutoff_state *cs, etm_router *rt) {
    etm_backend *be = rt->be;
    size_t E = (size_t)rt->E;
    cs->beta = rt->hp.et_beta;
    cs->max_pools = 1;
    if (rt->hp.pool_seqs > 0 && rt->hp.seq_len > 0) {
        long p = (long)rt->hp.pool_seqs * rt->hp.seq_len;
        cs->max_pools = (int)ETM_MAX(1, rt->max_tokens / p);
    }
    cs->cut = be->alloc(be, (size_t)cs->max_pools * E * sizeof(float));
    cs->threshold_dev = be->alloc(be, E * sizeof(float));
    cs->host_cut = etm_calloc((size_t)cs->max_pools * E, sizeof(float));
    cs->threshold = etm_calloc(E, sizeof(float));
    cs->ema = etm_calloc(E, sizeof(float));
    cs->cut_sum = etm_calloc(E, sizeof(double));
    cs->cut_batches = 0;
}

void etm_cutoff_release(etm_cutoff_state *cs, etm_router *rt) {
    rt->be->free(rt->be, cs->cut);
    rt->be->free(rt->be, cs->threshold_dev);
    free(cs->host_cut);
    free(cs->threshold);
    free(cs->ema);
    free(cs->cut_sum);
}

int etm_cutoff_rule_fixed(const etm_router *rt, etm_moe_mode mode, etm_route_rule *rule) {
    if (rt->counters[0] == 0) *rule = ETM_RULE_EC; /* no threshold estimate yet */
    else if (mode == ETM_MOE_EVAL) *rule = ETM_RULE_THRESHOLD;
    else if (mode == ETM_MOE_EVAL_BATCH) *rule = ETM_RULE_EC;
    else return 0;
    return 1;
}

void etm_cutoff_record(etm_cutoff_state *cs, etm_router *rt, const float *logits, int N) {
    etm_backend *be = rt->be;
    int E = rt->E;
    etm_routing_sizes sz = etm_router_sizes(&rt->hp, N);
    be->kth_largest_columns(be, cs->cut, logits, N, E, sz.pool, sz.k_target);
    be->download(be, cs->host_cut, cs->cut, (size_t)sz.n_pools * E * sizeof(float));
    for (int e = 0; e < E; e++) {
        double s = 0;
        for (int p = 0; p < sz.n_pools; p++) s += cs->host_cut[(size_t)p * E + e];
        cs->cut_sum[e] += s / sz.n_pools;
    }
    cs->cut_batches++;
}

static void update_thresholds(etm_cutoff_state *cs, etm_router *rt) {
    double beta = cs->beta;
    double bc = 1.0 - pow(beta, (double)rt->counters[0]);
    for (int e = 0; e < rt->E; e++)
        cs->threshold[e] = bc > 0 ? (float)((double)cs->ema[e] / bc) : cs->ema[e];
    rt->be->upload(rt->be, cs->threshold_dev, cs->threshold, (size_t)rt->E * sizeof(float));
}

void etm_cutoff_step_end(etm_cutoff_state *cs, etm_router *rt) {
    if (cs->cut_batches == 0) return;
    if (rt->counters[1] < rt->hp.ema_start_steps) {
        /* ema_start_steps: this step (0-based index counters[1]) is before the EMA starts; its
         * cut-offs are dropped, s stays 0, so the layer keeps routing by expert choice */
        for (int e = 0; e < rt->E; e++) cs->cut_sum[e] = 0;
        cs->cut_batches = 0;
        return;
    }
    double beta = cs->beta;
    for (int e = 0; e < rt->E; e++) {
        double cut = cs->cut_sum[e] / cs->cut_batches;
        cs->ema[e] = (float)(beta * cs->ema[e] + (1.0 - beta) * cut);
        cs->cut_sum[e] = 0;
    }
    cs->cut_batches = 0;
    rt->counters[0]++;
    update_thresholds(cs, rt);
}

void etm_cutoff_get_state(const etm_cutoff_state *cs, etm_router_state *out) {
    out->threshold = cs->threshold;
    out->ema = cs->ema;
}

void etm_cutoff_set_state(etm_cutoff_state *cs, etm_router *rt, const float *threshold, const float *ema) {
    size_t bytes = (size_t)rt->E * sizeof(float);
    if (threshold) memcpy(cs->threshold, threshold, bytes);
    if (ema) memcpy(cs->ema, ema, bytes);
    rt->be->upload(rt->be, cs->threshold_dev, cs->threshold, bytes);
    for (int e = 0; e < rt->E; e++) cs->cut_sum[e] = 0;
    cs->cut_batches = 0;
}
