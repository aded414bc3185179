/* routing_metrics.h: the routing statistics the ET authors log (their src/utils/routing_metrics.py),
 * summed over forwards of one MoE layer (a step's micro-batches in the trainer, the routed batches
 * of `etmoe inspect`) from the router's per-forward sums (router.h etm_moe_stats). Definitions:
 *  - tokens_0, tokens_1, tokens_2plus: share of tokens with 0, 1, 2 or more routed experts (shared
 *    experts not counted; the authors' tokens_with_no_expert, _1_expert, _2+_experts of their
 *    ec/et engine; their tc code counts the shared expert in too);
 *  - gate_mean, gate_std: mean and standard deviation (n - 1 in the denominator, torch's std) of
 *    the gates of the routed pairs (activation_weight_mean / _std);
 *  - logit_mean, logit_std: the same over all N E router logits (router_logit_mean / _std);
 *  - capacity_overflow, capacity_underflow: share of the (group, expert) counts a capacity
 *    applied to whose count under the rule itself (threshold, or tc's top-k) was above the upper
 *    bound / below the lower bound (capacity_overflow_rate / _underflow_rate: above_counts > k_max,
 *    < k_min); a group is a pool for the et clamp (the authors' threshold mode has one pool per
 *    micro-batch), the batch for tc capacity (whose lower bound is 0: never under). Undefined
 *    (no groups) when no capacity applied;
 *  - cutoff_gap (router.h etm_router_last_cutoff): per expert, the step's cut-off minus the
 *    threshold in force during the step (the authors' cutoffs - cutoff_ema, whose mean absolute
 *    value they log as cutoff_abs_deviation).
 * The authors average these over layers; etmoe reports each layer.
 *
 * Beside them, etmoe's measure of how large the routed experts' contribution is against the shared
 * experts' (issue 15: with Muon every routed down projection may grow as large as the shared one,
 * and the gate is then the only brake), from the layer's weights (etm_moe_down_rms) and the same
 * summed statistics (etm_expert_scale):
 *  - down_rms: the mean over the routed pairs of rms(W_down_e) = ||W_down_e||_F / sqrt(D Hx), i.e.
 *    the routed experts' down-projection RMS weighted by their loads;
 *  - gate_down: gate_mean x down_rms, the routed pairs' mean gate times their mean down RMS (the
 *    product of the two means, not the mean of the products: that would need each pair's gate in
 *    the per-micro-batch sums the ranks exchange);
 *  - shared_down_rms: ||W_shared_down||_F / sqrt(S D Hx) over all shared experts (a shared
 *    expert's gate is 1 under sigmoid and relu gates; under softmax_e it is the anchor's share);
 *  - gate_down_ratio: gate_down / shared_down_rms, about the routed pairs' output scale per unit
 *    of the shared experts' (their up projections not counted). Undefined without a shared expert
 *    or while its down projection is still all zero (its initialisation). */
#ifndef ETM_ROUTING_METRICS_H
#define ETM_ROUTING_METRICS_H

#include <stdint.h>

#include "router.h"

typedef struct {
    int64_t tokens;              /* tokens routed (summed over forwards) */
    int64_t by_experts[3];       /* tokens with 0, 1, 2+ routed experts */
    int64_t pairs;               /* routed pairs */
    double gate_sum, gate_sq;    /* over routed pairs */
    int64_t logits;              /* logits seen (tokens E) */
    double logit_sum, logit_sq;  /* over all logits */
    int64_t cap_groups, cap_over, cap_under; /* router.h etm_moe_stats */
} etm_routing_summary;

/* Adds one forward's statistics (E routed experts) to s. */
void etm_routing_summary_add(etm_routing_summary *s, const etm_moe_stats *st, int E);

/* The metrics (the definitions above); NAN where undefined (no tokens, fewer than 2 values for a
 * std, no capacity groups). */
typedef struct {
    double tokens_0, tokens_1, tokens_2plus;
    double gate_mean, gate_std;
    double logit_mean, logit_std;
    double capacity_overflow, capacity_underflow;
} etm_routing_metrics;
void etm_routing_summary_metrics(const etm_routing_summary *s, etm_routing_metrics *out);

/* The routed experts' scale against the shared ones (the definitions above); NAN where undefined
 * (no routed pairs; no shared expert or an all-zero one). */
typedef struct {
    double down_rms, gate_down, shared_down_rms, gate_down_ratio;
} etm_expert_scale;
/* From E experts' down-projection RMS (etm_moe_down_rms), their loads (routed pairs per expert,
 * summed like s), the summary's mean gate (gate_mean) and the shared experts' RMS (NAN: none). */
void etm_expert_scale_of(const double *down_rms, const int64_t *load, int E, double gate_mean,
                         double shared_down_rms, etm_expert_scale *out);

#endif
