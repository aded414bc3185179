/* moe.h: one Mixture-of-Experts MLP layer (router, routed experts, shared experts) and its
 * routing state. The layer computes, for N tokens x_t (already RMS-normalised):
 *
 *     y_t = g_t sum_s shared_s(x_t) + sum_e z[t,e] * gate[t,e] * expert_e(x_t),   r = x W_r^T
 *
 * with expert(x) = W_down relu(W_up x)^2, z from the router (tc, ec or et; see router.h), the
 * gate from r by the gate function (router_activation: sigmoid(r) by default, softmax over
 * experts for the softmax TC variant; router.h) and g_t the shared experts' gate: 1, the
 * softmax_e anchor's share, or 1 / G for softmax_e_shared_out. Dispatch is dropless: pairs
 * grouped by expert, one GEMM per expert, combined per token in a fixed order.
 * All tensors are backend memory; the weights and their gradients belong to the model's
 * parameter block and are only pointed to here. */
#ifndef ETM_MOE_H
#define ETM_MOE_H

#include "backend.h"
#include "hparams.h"
#include "router.h"

typedef struct {
    float *router;      /* (E, D) */
    float *up;          /* (E, Hx, D) routed experts' up projections */
    float *down;        /* (E, D, Hx) routed experts' down projections */
    float *shared_up;   /* (S, Hx, D) shared experts; NULL when S == 0 */
    float *shared_down; /* (S, D, Hx) */
} etm_moe_weights;

typedef struct etm_moe_layer etm_moe_layer;

/* Checks the MoE settings of hp for micro-batches of tokens_per_batch tokens (routing pool,
 * k_target >= 1, ranges); 0, or -1 with a message naming the setting. Call before create. */
int etm_moe_check_hparams(const etm_hparams *hp, int tokens_per_batch, etm_error *err);

/* Builds a layer for up to max_tokens tokens per forward, sequences of seq_len tokens.
 * NULL when hp->router is dense. */
etm_moe_layer *etm_moe_create(etm_backend *be, const etm_hparams *hp, int max_tokens);
void etm_moe_free(etm_moe_layer *layer);

/* y(N,D) (writes) = the layer applied to x(N,D). N is a multiple of hp->seq_len and at most
 * max_tokens. Returns the layer's added loss (aux + z, scaled by their coefficients and meant
 * to be added to the mean token loss); keeps what backward needs (a copy of x included, so the
 * caller may reuse x's buffer). The routing rules per mode are documented in router.h. */
float etm_moe_forward(etm_moe_layer *layer, const etm_moe_weights *w, const float *x, float *y,
                      int N, etm_moe_mode mode);
/* The router logits r = x W_r^T (N,E) (backend, layer-owned, valid until the next forward) that
 * etm_moe_forward would compute from x, by the same operations (the same bits): the routing pass
 * of ec_pool_scope = step (model.h etm_model_route_step). Overwrites the layer's saved input, so a
 * backward needs a new forward first. */
const float *etm_moe_router_logits(etm_moe_layer *layer, const etm_moe_weights *w, const float *x, int N);
/* dx(N,D) += d/dx; weight gradients in dw accumulate. loss_scale multiplies the gradient of the
 * added loss (1 / grad_accum when the trainer averages micro-batches). */
void etm_moe_backward(etm_moe_layer *layer, const etm_moe_weights *w, etm_moe_weights *dw,
                      const float *dy, float *dx, float loss_scale);

/* Once per optimizer step, after the micro-batches: ET/EC cut-off EMA update (mean of the
 * micro-batches' cut-offs, bias-corrected), loss-free bias update, step counter for warm-up. */
void etm_moe_step_end(etm_moe_layer *layer);

const etm_moe_stats *etm_moe_last_stats(const etm_moe_layer *layer);
/* The RMS of the down projections in w (routing_metrics.h, etm_expert_scale): routed[e] =
 * ||W_down_e||_F / sqrt(D Hx) for each of the E routed experts (host, E doubles), and *shared =
 * ||W_shared_down||_F / sqrt(S D Hx) over all S shared experts together (NAN when S = 0). */
void etm_moe_down_rms(const etm_moe_layer *layer, const etm_moe_weights *w, double *routed, double *shared);
/* The routing mask z (N,E) of the last forward, backend memory: 1 = token n went to expert e. */
const uint8_t *etm_moe_mask(const etm_moe_layer *layer);
/* The router logits r = x W_r^T (N,E) of the last forward, backend memory (read-only). */
const float *etm_moe_logits(const etm_moe_layer *layer);
/* The layer's router (router.h: the gate scores, the rule in use), for diagnostics. */
const etm_router *etm_moe_router(const etm_moe_layer *layer);
/* The same, writable: for the data-parallel trainer's etm_router_set_step_records. */
etm_router *etm_moe_router_mut(etm_moe_layer *layer);

/* The router state that checkpoints save and restore (router.h). */
void etm_moe_get_state(const etm_moe_layer *layer, etm_router_state *out); /* out arrays are layer-owned views */
void etm_moe_set_state(etm_moe_layer *layer, const float *threshold, const float *ema,
                       const float *bias, const int64_t *counters);
/* etm_router_end_warmup on the layer's router. */
void etm_moe_end_warmup(etm_moe_layer *layer);

#endif
