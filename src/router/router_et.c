/* router_et.c: expert threshold, the method (router.h): r >= c_i with c the bias-corrected EMA
 * of the batch cut-offs (router_cutoff.c); EC for the first et_warmup_steps optimizer steps
 * while the EMA already learns (over the whole step's tokens with ec_pool_scope = step: the
 * selection router_pool.h made); optional capacity clamp per pool in TRAIN. */
#include "router_kind.h"

#include <assert.h>
#include <stdlib.h>

typedef struct {
    etm_cutoff_state cut; /* cut-off EMA and thresholds */
    int warmup_steps;     /* route by EC while fewer optimizer steps have ended */
    int clamps;           /* the capacity clamp is on (etm_router_et_clamps) */
} et_state;

static int et_check(const etm_hparams *hp, int tokens_per_batch, etm_error *err) {
    if (etm_cutoff_check(hp, tokens_per_batch, err) != 0) return -1;
    if (hp->et_warmup_steps < 0)
        return etm_fail(err, "et_warmup_steps=%d must be >= 0", hp->et_warmup_steps);
    if (!(hp->et_capacity >= 0)) return etm_fail(err, "et_capacity=%g must be >= 0", hp->et_capacity);
    if (hp->et_capacity_mode != ETM_CLAMP_POSITIVE && hp->et_capacity_mode != ETM_CLAMP_ALWAYS)
        return etm_fail(err, "et_capacity_mode: unknown mode %d", (int)hp->et_capacity_mode);
    return 0;
}

static void et_create(etm_router *rt) {
    et_state *s = etm_calloc(1, sizeof(*s));
    etm_cutoff_init(&s->cut, rt);
    s->warmup_steps = rt->hp.et_warmup_steps;
    s->clamps = etm_router_et_clamps(&rt->hp);
    rt->state = s;
}

static void et_destroy(etm_router *rt) {
    et_state *s = rt->state;
    etm_cutoff_release(&s->cut, rt);
    free(s);
}

static etm_route_rule et_rule(const etm_router *rt, etm_moe_mode mode) {
    const et_state *s = rt->state;
    etm_route_rule r;
    if (etm_cutoff_rule_fixed(rt, mode, &r)) return r;
    return rt->counters[1] < s->warmup_steps ? ETM_RULE_EC : ETM_RULE_THRESHOLD;
}

static int et_route(etm_router *rt, const float *logits, int N, etm_moe_mode mode, int *pool_rows) {
    etm_backend *be = rt->be;
    et_state *s = rt->state;
    int E = rt->E, before = 0;
    etm_routing_sizes sz = etm_router_sizes(&rt->hp, N);
    const float *thr = s->cut.threshold_dev;
    int record = mode == ETM_MOE_TRAIN;
    etm_route_rule rule = et_rule(rt, mode);
    if (mode == ETM_MOE_TRAIN && rt->preset && rule == ETM_RULE_EC) {
        /* ec_pool_scope = step during the EC warm-up: the routing pass selected over the whole
         * step (router_pool.h) */
        assert(rt->preset_N == N);
        be->upload(be, rt->mask, rt->preset, (size_t)N * E);
        record = rt->preset_record;
    } else if (rule == ETM_RULE_EC) {
        be->select_columns(be, rt->mask, logits, NULL, NULL, N, E, sz.pool, sz.k_target, sz.k_target);
    } else if (s->clamps && mode == ETM_MOE_TRAIN) {
        be->select_columns(be, rt->mask_before, logits, NULL, thr, N, E, N, 0, N);
        be->select_columns(be, rt->mask, logits, NULL, thr, N, E, sz.pool, sz.clamp_lo, sz.clamp_hi);
        before = 1;
    } else {
        be->select_columns(be, rt->mask, logits, NULL, thr, N, E, N, 0, N);
    }
    if (mode == ETM_MOE_TRAIN) rt->preset = NULL; /* used or, past the warm-up, not wanted */
    if (record) etm_cutoff_record(&s->cut, rt, logits, N);
    *pool_rows = sz.pool;
    return before;
}

static void et_step_end(etm_router *rt) { etm_cutoff_step_end(&((et_state *)rt->state)->cut, rt); }

static void et_resum(etm_router *rt) { etm_cutoff_resum(&((et_state *)rt->state)->cut, rt); }

static void et_get_state(const etm_router *rt, etm_router_state *out) {
    etm_cutoff_get_state(&((const et_state *)rt->state)->cut, out);
}

static void et_set_state(etm_router *rt, const float *threshold, const float *ema, const float *bias) {
    (void)bias;
    etm_cutoff_set_state(&((et_state *)rt->state)->cut, rt, threshold, ema);
}

static const etm_cutoff_state *et_cutoff(const etm_router *rt) { return &((const et_state *)rt->state)->cut; }

const etm_router_ops etm_router_et_ops = {
    .kind = ETM_ROUTER_ET,
    .name = "et",
    .check = et_check,
    .create = et_create,
    .destroy = et_destroy,
    .rule = et_rule,
    .route = et_route,
    .step_end = et_step_end,
    .resum = et_resum,
    .get_state = et_get_state,
    .set_state = et_set_state,
    .cutoff = et_cutoff,
};
