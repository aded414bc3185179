/* router_cutoff.c: the per-expert cut-off EMA and thresholds that expert choice (router_ec.c)
 * and expert threshold (router_et.c) share (router.h: cut-off and its scope, EMA, bias
 * correction, s == 0), and the step-scope cut-off of gathered rows (etm_cutoff_of_rows). */
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
    if (hp->et_cutoff_scope < ETM_CUTOFF_POOL || hp->et_cutoff_scope > ETM_CUTOFF_STEP)
        return etm_fail(err, "et_cutoff_scope: unknown scope %d", (int)hp->et_cutoff_scope);
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
    cs->scope = rt->hp.et_cutoff_scope;
    cs->last_cut = etm_calloc(E, sizeof(float));
    cs->last_gap = etm_calloc(E, sizeof(float));
}

void etm_cutoff_release(etm_cutoff_state *cs, etm_router *rt) {
    rt->be->free(rt->be, cs->cut);
    rt->be->free(rt->be, cs->threshold_dev);
    free(cs->host_cut);
    free(cs->threshold);
    free(cs->ema);
    free(cs->cut_sum);
    free(cs->step_logits);
    free(cs->step_scratch);
    free(cs->last_cut);
    free(cs->last_gap);
}

int etm_cutoff_rule_fixed(const etm_router *rt, etm_moe_mode mode, etm_route_rule *rule) {
    if (rt->counters[0] == 0) *rule = ETM_RULE_EC; /* no threshold estimate yet */
    else if (mode == ETM_MOE_EVAL) *rule = ETM_RULE_THRESHOLD;
    else if (mode == ETM_MOE_EVAL_BATCH) *rule = ETM_RULE_EC;
    else return 0;
    return 1;
}

/* The k-th largest (1-based) of v[0..n): a selection (Hoare partitions, descending, middle-of-
 * three pivot) that reorders v. The value does not depend on v's order. */
static float kth_largest(float *v, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi];
        float pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));
        size_t i = lo, j = hi;
        for (;;) { /* [lo, i) >= pivot, (j, hi] <= pivot */
            while (v[i] > pivot) i++;
            while (v[j] < pivot) j--;
            if (i >= j) break;
            float t = v[i];
            v[i] = v[j];
            v[j] = t;
            i++;
            j--;
        }
        /* now [lo, j] >= pivot >= [j+1, hi] (Hoare: j < hi) */
        if (want <= j) hi = j;
        else lo = j + 1;
    }
    return v[want];
}

void etm_cutoff_of_rows(const float *logits, size_t rows, int E, int top_k, float *cut, float *scratch) {
    if (rows == 0) return;
    size_t kt = rows * (size_t)top_k / (size_t)E;
    kt = ETM_MIN(ETM_MAX(kt, (size_t)1), rows);
    for (int e = 0; e < E; e++) {
        for (size_t t = 0; t < rows; t++) scratch[t] = logits[t * (size_t)E + e];
        cut[e] = kth_largest(scratch, rows, kt);
    }
}

/* scope step: room for need rows of kept logits */
static void reserve_rows(etm_cutoff_state *cs, size_t E, size_t need) {
    if (need > cs->step_cap) {
        size_t cap = ETM_MAX(need, 2 * cs->step_cap);
        cs->step_logits = etm_realloc(cs->step_logits, cap * E * sizeof(float));
        cs->step_scratch = etm_realloc(cs->step_scratch, cap * sizeof(float));
        cs->step_cap = cap;
    }
}

/* scope step: keeps the micro-batch's logits (N,E) on the host until step_end */
static void keep_logits(etm_cutoff_state *cs, etm_router *rt, const float *logits, int N) {
    size_t E = (size_t)rt->E, need = cs->step_rows + (size_t)N;
    reserve_rows(cs, E, need);
    rt->be->download(rt->be, cs->step_logits + cs->step_rows * E, logits, (size_t)N * E * sizeof(float));
    cs->step_rows = need;
}

void etm_cutoff_record(etm_cutoff_state *cs, etm_router *rt, const float *logits, int N) {
    etm_backend *be = rt->be;
    int E = rt->E;
    cs->cut_batches++;
    if (cs->scope == ETM_CUTOFF_STEP) {
        keep_logits(cs, rt, logits, N);
        return;
    }
    etm_routing_sizes sz = etm_router_sizes(&rt->hp, N);
    int rows = sz.pool, kt = sz.k_target;
    if (cs->scope == ETM_CUTOFF_MICROBATCH) {
        rows = N;
        kt = sz.k_batch;
    }
    int n_pools = N / rows;
    be->kth_largest_columns(be, cs->cut, logits, N, E, rows, kt);
    be->download(be, cs->host_cut, cs->cut, (size_t)n_pools * E * sizeof(float));
    /* the micro-batch's record (router_kind.h): the data-parallel trainer gathers them and
     * rebuilds cut_sum in global micro-batch order (etm_cutoff_resum) */
    double *rec = etm_router_new_record(rt);
    for (int e = 0; e < E; e++) {
        double s = 0;
        for (int p = 0; p < n_pools; p++) s += cs->host_cut[(size_t)p * E + e];
        rec[e] = s / n_pools;
        cs->cut_sum[e] += rec[e];
    }
}

void etm_cutoff_set_step_logits(etm_cutoff_state *cs, etm_router *rt, const float *logits, size_t rows, int n_forwards) {
    size_t E = (size_t)rt->E;
    reserve_rows(cs, E, rows);
    memmove(cs->step_logits, logits, rows * E * sizeof(float));
    cs->step_rows = rows;
    cs->cut_batches = n_forwards;
}

void etm_cutoff_resum(etm_cutoff_state *cs, etm_router *rt) {
    int E = rt->E;
    /* scope step keeps the step's logits instead of records: the trainer gathers them over the
     * ranks (etm_cutoff_set_step_logits) */
    if (cs->scope == ETM_CUTOFF_STEP) return;
    for (int e = 0; e < E; e++) cs->cut_sum[e] = 0;
    for (int b = 0; b < rt->n_rec; b++)
        for (int e = 0; e < E; e++) cs->cut_sum[e] += rt->rec[(size_t)b * E + e];
    cs->cut_batches = rt->n_rec;
}

static void update_thresholds(etm_cutoff_state *cs, etm_router *rt) {
    double beta = cs->beta;
    double bc = 1.0 - pow(beta, (double)rt->counters[0]);
    for (int e = 0; e < rt->E; e++)
        cs->threshold[e] = bc > 0 ? (float)((double)cs->ema[e] / bc) : cs->ema[e];
    rt->be->upload(rt->be, cs->threshold_dev, cs->threshold, (size_t)rt->E * sizeof(float));
}

/* This step's cut-off (router.h) into cs->cut_sum (double: the pool and microbatch means stay
 * unrounded until the EMA, as they always were) and cs->last_cut, its distance to the threshold
 * in force into cs->last_gap; clears the step's records. */
static void step_cutoff(etm_cutoff_state *cs, etm_router *rt) {
    int E = rt->E;
    if (cs->scope == ETM_CUTOFF_STEP) {
        etm_cutoff_of_rows(cs->step_logits, cs->step_rows, E, rt->k, cs->last_cut, cs->step_scratch);
        for (int e = 0; e < E; e++) cs->cut_sum[e] = cs->last_cut[e];
        cs->step_rows = 0;
    } else {
        for (int e = 0; e < E; e++) {
            cs->cut_sum[e] /= cs->cut_batches;
            cs->last_cut[e] = (float)cs->cut_sum[e];
        }
    }
    for (int e = 0; e < E; e++) cs->last_gap[e] = cs->last_cut[e] - cs->threshold[e];
    cs->has_last = 1;
    cs->cut_batches = 0;
}

void etm_cutoff_step_end(etm_cutoff_state *cs, etm_router *rt) {
    if (cs->cut_batches == 0) return;
    step_cutoff(cs, rt);
    /* ema_start_steps: a step (0-based index counters[1]) before the EMA starts drops its
     * cut-off, s stays 0, so the layer keeps routing by expert choice */
    int start = rt->counters[1] >= rt->hp.ema_start_steps;
    double beta = cs->beta;
    for (int e = 0; e < rt->E; e++) {
        if (start) cs->ema[e] = (float)(beta * cs->ema[e] + (1.0 - beta) * cs->cut_sum[e]);
        cs->cut_sum[e] = 0;
    }
    if (!start) return;
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
    cs->step_rows = 0;
}
