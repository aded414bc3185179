/* router_ec.c: expert choice (router.h): each expert takes the top k_target tokens by logit
 * within each routing pool; EVAL routes by the thresholds the cut-off EMA (router_cutoff.c)
 * keeps, as the paper evaluates EC models. */
#include "router_kind.h"

#include <assert.h>
#include <stdlib.h>

static void ec_create(etm_router *rt) {
    etm_cutoff_state *cs = etm_calloc(1, sizeof(*cs));
    etm_cutoff_init(cs, rt);
    rt->state = cs;
}

static void ec_destroy(etm_router *rt) {
    etm_cutoff_release(rt->state, rt);
    free(rt->state);
}

static etm_route_rule ec_rule(const etm_router *rt, etm_moe_mode mode) {
    etm_route_rule r;
    if (etm_cutoff_rule_fixed(rt, mode, &r)) return r;
    return ETM_RULE_EC;
}

static int ec_route(etm_router *rt, const float *logits, int N, etm_moe_mode mode, int *pool_rows) {
    etm_backend *be = rt->be;
    etm_cutoff_state *cs = rt->state;
    etm_routing_sizes sz = etm_router_sizes(&rt->hp, N);
    int record = mode == ETM_MOE_TRAIN;
    if (mode == ETM_MOE_TRAIN && rt->preset) {
        /* ec_pool_scope = step: the routing pass selected over the whole step (router_pool.h) */
        assert(rt->preset_N == N);
        be->upload(be, rt->mask, rt->preset, (size_t)N * rt->E);
        record = rt->preset_record;
        rt->preset = NULL;
    } else if (ec_rule(rt, mode) == ETM_RULE_EC) {
        be->select_columns(be, rt->mask, logits, NULL, NULL, N, rt->E, sz.pool, sz.k_target, sz.k_target);
    } else {
        be->select_columns(be, rt->mask, logits, NULL, cs->threshold_dev, N, rt->E, N, 0, N);
    }
    if (record) etm_cutoff_record(cs, rt, logits, N);
    *pool_rows = sz.pool;
    return 0;
}

static void ec_step_end(etm_router *rt) { etm_cutoff_step_end(rt->state, rt); }

static void ec_resum(etm_router *rt) { etm_cutoff_resum(rt->state, rt); }

static void ec_get_state(const etm_router *rt, etm_router_state *out) {
    etm_cutoff_get_state(rt->state, out);
}

static void ec_set_state(etm_router *rt, const float *threshold, const float *ema, const float *bias) {
    (void)bias;
    etm_cutoff_set_state(rt->state, rt, threshold, ema);
}

static const etm_cutoff_state *ec_cutoff(const etm_router *rt) { return rt->state; }

const etm_router_ops etm_router_ec_ops = {
    .kind = ETM_ROUTER_EC,
    .name = "ec",
    .check = etm_cutoff_check,
    .create = ec_create,
    .destroy = ec_destroy,
    .rule = ec_rule,
    .route = ec_route,
    .step_end = ec_step_end,
    .resum = ec_resum,
    .get_state = ec_get_state,
    .set_state = ec_set_state,
    .cutoff = ec_cutoff,
};
