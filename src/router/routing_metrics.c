/* routing_metrics.c: the authors' routing statistics from summed per-forward sums
 * (routing_metrics.h has the definitions). */
#include "routing_metrics.h"

#include <math.h>

void etm_routing_summary_add(etm_routing_summary *s, const etm_moe_stats *st, int E) {
    int64_t none = st->experts_hist[0], one = st->experts_hist[1]; /* E >= 1: hist has 2+ entries */
    s->tokens += st->n_tokens;
    s->by_experts[0] += none;
    s->by_experts[1] += one;
    s->by_experts[2] += st->n_tokens - none - one;
    s->pairs += st->n_pairs;
    s->gate_sum += st->gate_sum;
    s->gate_sq += st->gate_sq;
    s->logits += (int64_t)st->n_tokens * E;
    s->logit_sum += st->logit_sum;
    s->logit_sq += st->logit_sq;
    s->cap_groups += st->cap_groups;
    s->cap_over += st->cap_over;
    s->cap_under += st->cap_under;
}

static double mean_of(double sum, int64_t n) { return n > 0 ? sum / (double)n : NAN; }

/* sqrt of (sum of squares - n mean^2) / (n - 1), the unbiased variance, clamped at 0 against
 * rounding */
static double std_of(double sum, double sq, int64_t n) {
    if (n < 2) return NAN;
    double var = (sq - sum * sum / (double)n) / (double)(n - 1);
    return sqrt(var > 0 ? var : 0.0);
}

void etm_expert_scale_of(const double *down_rms, const int64_t *load, int E, double gate_mean,
                         double shared_down_rms, etm_expert_scale *out) {
    double sum = 0.0;
    int64_t pairs = 0;
    for (int e = 0; e < E; e++) { /* expert order: the same sum whoever computes it */
        sum += (double)load[e] * down_rms[e];
        pairs += load[e];
    }
    out->down_rms = mean_of(sum, pairs);
    out->gate_down = gate_mean * out->down_rms; /* NAN when either is */
    out->shared_down_rms = shared_down_rms;
    out->gate_down_ratio = shared_down_rms > 0 ? out->gate_down / shared_down_rms : NAN;
}

void etm_routing_summary_metrics(const etm_routing_summary *s, etm_routing_metrics *out) {
    out->tokens_0 = mean_of((double)s->by_experts[0], s->tokens);
    out->tokens_1 = mean_of((double)s->by_experts[1], s->tokens);
    out->tokens_2plus = mean_of((double)s->by_experts[2], s->tokens);
    out->gate_mean = mean_of(s->gate_sum, s->pairs);
    out->gate_std = std_of(s->gate_sum, s->gate_sq, s->pairs);
    out->logit_mean = mean_of(s->logit_sum, s->logits);
    out->logit_std = std_of(s->logit_sum, s->logit_sq, s->logits);
    out->capacity_overflow = mean_of((double)s->cap_over, s->cap_groups);
    out->capacity_underflow = mean_of((double)s->cap_under, s->cap_groups);
}
