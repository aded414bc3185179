/* router.h: the routing rules of one MoE layer behind one interface: token choice (tc: top-k,
 * optional aux / switch / loss-free balancing, capacity dropping; router_tc.c), expert choice
 * (ec: top k_target tokens per expert within pools; router_ec.c) and expert threshold (et:
 * r >= c_i with an EMA of the batch cut-offs, EC warm-up, optional capacity clamp;
 * router_et.c), plus the router z-loss. Each kind is one row of the table in router.c
 * (router_kind.h defines a row); this header also holds the types the MoE layer and the
 * checkpoint share with the router (modes, statistics, saved state).
 *
 * The router takes the logits r = x W_r^T (N,E) in backend memory and produces the routing
 * mask z (N,E), the score of every (token, expert) (the gate value: the gate function below) and
 * the balance / z losses; backward turns the gradient of the scores into the
 * gradient of the logits, adding the losses' terms. Its per-expert state (thresholds, EMAs,
 * loss-free biases, counters) lives on the host and is uploaded when it changes.
 *
 * Definitions shared by every rule (documented here once):
 *  - pool: pool_seqs * seq_len consecutive tokens, or the whole batch when pool_seqs is 0, when
 *    that is at least the batch, or when the batch is not a whole number of pools (only eval
 *    batches can be; etm_router_check_hparams rejects training batches that are not).
 *  - k_target = floor(pool * k / E), at least 1 and at most the pool (the authors' rounding).
 *  - ec_pool_scope = step (TRAIN, ec; et while it routes by EC): the pool is every token of the
 *    optimizer step, all its micro-batches on all ranks in global micro-batch order; a routing
 *    pass selects it (router_pool.h) and each TRAIN forward takes its rows (etm_router_use_mask).
 *  - cut-off of expert i over a set of R tokens = its kt-th largest logit there, kt =
 *    floor(R k / E) clamped to [1, R] (the k_target of those tokens as one pool). Once per
 *    optimizer step (step_end) the step's cut-off cut updates m = beta m + (1-beta) cut, s += 1,
 *    c = m / (1 - beta^s) (Adam-style bias correction). Which tokens (et_cutoff_scope; only TRAIN
 *    forwards of ec and et layers count):
 *      pool (default):  each micro-batch contributes the mean over its pools of the pools'
 *                       cut-offs; cut = the mean over the step's micro-batches;
 *      microbatch:      each micro-batch contributes the cut-off of all its N tokens, however
 *                       it is pooled for EC; cut = the mean over micro-batches (the authors'
 *                       threshold mode, common.py _build_routing_plan; their EC phase with
 *                       routing_chunk_seqs averages chunk cut-offs, as pool does);
 *      step:            cut = the cut-off of all the step's tokens together (every micro-batch;
 *                       the logits are kept on the host until step_end; etm_cutoff_of_rows).
 *    With one pool per micro-batch, pool and microbatch are the same; with one micro-batch per
 *    step, microbatch and step are (bit for bit, up to the sign of a zero).
 *  - ema_start_steps = N: the step_ends of the first N optimizer steps drop their cut-offs
 *    instead of updating the EMA (s stays 0); the authors' ema_start_steps.
 *  - Before the first EMA update (s == 0) ec and et layers route by EC in every mode: there is
 *    no threshold estimate yet (m = 0 would send about half the tokens to every expert). So
 *    with et_warmup_steps = 0 an ET layer uses EC for exactly its first optimizer step.
 *  - et in TRAIN: EC while fewer than et_warmup_steps optimizer steps have ended, thresholds
 *    from then on (with the capacity clamp when etm_router_et_clamps: et_capacity > 0, or
 *    et_capacity_mode = always, where C = 0 means exactly k_target; applied per pool with
 *    lo = floor((1-C) k_target), hi = floor((1+C) k_target)).
 *  - EVAL: ec and et route by the frozen thresholds (purely per token, causal: this is how the
 *    paper evaluates EC models too), tc by top-k (with the loss-free bias, without capacity).
 *    Nothing is recorded.
 *  - EVAL_BATCH: ec and et route by expert choice over the batch's pools (not causal), tc as
 *    in EVAL. Nothing is recorded and the state is untouched.
 *  - REPLAY: the previous mask is kept; scores and losses are recomputed from the new logits
 *    (the balance loss keeps the previous counts f_i). Nothing is recorded.
 *  - Balance losses (tc), counts taken from the top-k choice before capacity dropping:
 *    aux = alpha sum_i f_i P_i, f_i = count_i E / (N k), P_i = mean gate score (sigmoid or
 *    softmax); switch = alpha E sum_i f_i P_i, f_i = count_i / (N k), P_i = mean softmax(r)_i
 *    even with sigmoid gates (the Switch Transformer's router probability). The weightings are
 *    the same number; the two differ only in P_i, and coincide for softmax scores.
 *    aux_error = alpha sum_i (f_i - 1) P_i with aux's f_i and P_i (the authors' third loss,
 *    token_choice.py _add_aux_loss: f - 1.0): zero gradient through f, like the others; it
 *    may be negative.
 *    z-loss = z_loss * mean_t logsumexp_i(r[t,i])^2, for every router.
 *  - Gate functions (router_activation, the authors' src/models/router_utils.py; r a row of
 *    logits). The gate multiplies a routed expert's output; selection never depends on it.
 *      sigmoid:  sigmoid(r) (tc: tc_score, sigmoid or the row softmax);
 *      relu:     max(r, 0) (ec, et, and tc with tc_score = sigmoid);
 *      softmax_e: per token, softmax over [0, r_1..r_E], a zero-logit anchor standing for the
 *                shared experts (router_utils.py:31-42); with shared experts each shared
 *                expert's output is scaled by the anchor's share 1 / (1 + sum_j exp r_j), with
 *                its gradient (expert_threshold_choice.py:78-88 scales the shared output by it);
 *      softmax_e_shared_out: routed gates as softmax_e, shared experts scaled by 1 / G with
 *                G = ffn_hidden / expert_hidden, the authors' granularity (router_utils.py:44-56);
 *      softmax_k: per expert, softmax over the N tokens of the forward (engine.py:56-62 applies
 *                it to all B*T tokens before any chunking into pools; EVAL and EVAL_BATCH too,
 *                as the authors evaluate with the same forward: the gates then depend on the
 *                other tokens of the evaluated batch, the routing stays causal); ec and et only.
 *    Without shared experts softmax_e and softmax_e_shared_out are the same anchored softmax
 *    (the authors' ec/et always include the anchor; engine.py:58).
 *  - Selection compares logits (plus the loss-free bias for tc): a row's top-k, an expert's
 *    top k_target of a pool, the threshold, the clamp. Sigmoid gates are monotone in r per
 *    element, so these orders are the gates' orders, without sigmoid's fp32 saturation ties.
 *    One exception: tc capacity with softmax scores ranks each expert's candidates by their
 *    softmax gate, lowest dropped (as Switch / GShard do). A softmax is monotone within a row
 *    only: logits of different tokens do not order their gates (shifting a row's logits
 *    changes none of its gates). With sigmoid scores the capacity ranks by selection logit.
 *  - Ties (equal compared values, which are common: with zero-initialised output projections
 *    the logits depend on the token id only):
 *      top-k per token:            the lower expert index wins;
 *      ec, tc capacity, et clamp:  within an expert's column, the lower token index (the earlier
 *                                  token of the pool) wins; the count is exact (k_target, the
 *                                  capacity, the clamp bound), so tied tokens past it go without;
 *      et threshold:               r >= c_i (the authors' code; the paper writes >): every token
 *                                  tied at the threshold is routed, so a load may exceed
 *                                  k_target by the number of ties.
 */
#ifndef ETM_ROUTER_H
#define ETM_ROUTER_H

#include "backend.h"
#include "hparams.h"

typedef enum {
    ETM_MOE_TRAIN = 0, /* routing from the batch (EC pools, ET thresholds or EC warm-up), cut-offs
                          recorded for the once-per-step update */
    ETM_MOE_EVAL,      /* frozen state: ET and EC route by thresholds (causal), TC by top-k; no
                          statistics feed back into the router */
    ETM_MOE_REPLAY,    /* reuse the mask of the previous forward (for finite-difference checks) */
    ETM_MOE_EVAL_BATCH /* frozen state, batch routing: ET and EC by expert choice over the
                          batch's pools (not causal), TC by top-k; nothing recorded */
} etm_moe_mode;

/* Routing statistics of the last forward (host memory). */
typedef struct {
    int n_tokens;          /* N */
    int n_pairs;           /* routed (token, expert) pairs */
    int *expert_load;      /* (E) tokens per routed expert */
    int *experts_hist;     /* (E+1) tokens by number of routed experts (0..E) */
    int tokens_no_expert;  /* tokens with zero routed experts */
    int dropped;           /* TC capacity / ET clamp: pairs removed below the threshold rule */
    int padded;            /* ET clamp: pairs added beyond the threshold rule */
    float mean_experts;    /* n_pairs / N */
    float aux_loss;        /* balance loss (already scaled by its coefficient), 0 when off */
    float z_loss;          /* router z-loss (scaled), 0 when off */
    /* sums for the authors' routing metrics (routing_metrics.h), in double, in token order: */
    double gate_sum, gate_sq;   /* gates (scores) of the routed pairs, and their squares */
    double logit_sum, logit_sq; /* all N E router logits, and their squares */
    int cap_groups;        /* (group, expert) pairs a TC capacity or ET clamp applied to (a group:
                              the batch for tc, a pool for et); 0 when none applied */
    int cap_over;          /* of them, selected by the rule (top-k, threshold) above the upper bound */
    int cap_under;         /* ... below the lower bound (et clamp only; tc has none) */
} etm_moe_stats;

/* Router state that checkpoints save and restore (host memory, E floats each). A kind without
 * one of the parts (tc has no thresholds, ec and et no bias) shows zeros there. */
typedef struct {
    float *threshold;     /* (E) c_i, the bias-corrected EMA used for routing */
    float *ema;           /* (E) m_i, the raw EMA */
    float *bias;          /* (E) loss-free selection bias b_i */
    int64_t *counters;    /* (2) EMA updates so far (s), optimizer steps seen */
} etm_router_state;

/* The sizes a layer routes N tokens with (the definitions above); every caller that needs them
 * (the router itself, check-backend, routing-profile) takes them from etm_router_sizes. */
typedef struct {
    int pool;       /* rows per routing pool (N for tc) */
    int n_pools;    /* N / pool */
    int k_target;   /* floor(pool k / E), clamped to [1, pool] */
    int capacity;   /* tc capacity ceil(cf N k / E) (less a 1e-6 relative slack, in [1, N]); 0 = off */
    int clamp_lo;   /* et capacity clamp per pool: floor((1-C) k_target), at least 0 (0 when off) */
    int clamp_hi;   /* floor((1+C) k_target), at most the pool (the pool when off) */
    int k_batch;    /* floor(N k / E), clamped to [1, N]: the whole batch's k_target (the cut-off
                       of et_cutoff_scope = microbatch) */
} etm_routing_sizes;
etm_routing_sizes etm_router_sizes(const etm_hparams *hp, int N);
/* Whether an et layer clamps its loads in training: et_capacity > 0, or any et_capacity with
 * et_capacity_mode = always (0: exactly k_target per pool). */
int etm_router_et_clamps(const etm_hparams *hp);

typedef struct etm_router etm_router;

/* The rule a forward in a given mode would use now. */
typedef enum {
    ETM_RULE_TOPK = 0,  /* tc: top-k per token */
    ETM_RULE_EC,        /* expert choice within pools (ec training, et warm-up, s == 0) */
    ETM_RULE_THRESHOLD  /* r >= c_i (et after warm-up, ec and et in EVAL) */
} etm_route_rule;

/* Checks the router settings for batches of tokens_per_batch tokens (a micro-batch); returns 0
 * or -1 with a message naming the setting. */
int etm_router_check_hparams(const etm_hparams *hp, int tokens_per_batch, etm_error *err);

/* Builds a router for up to max_tokens tokens; NULL when hp->router is dense. */
etm_router *etm_router_create(etm_backend *be, const etm_hparams *hp, int max_tokens);
void etm_router_free(etm_router *rt);

/* Routes N tokens (N <= max_tokens) from logits (N,E) (backend). Fills the router's mask and
 * scores and the routing fields of st (its expert_load and experts_hist arrays must hold E and
 * E+1 ints). Returns aux + z loss, already scaled by their coefficients. In REPLAY mode N must
 * equal the previous forward's. */
float etm_router_forward(etm_router *rt, const float *logits, int N, etm_moe_mode mode,
                         etm_moe_stats *st);
const uint8_t *etm_router_mask(const etm_router *rt);  /* (N,E) backend: 1 = routed */
const float *etm_router_scores(const etm_router *rt);  /* (N,E) backend: gate of every pair */

/* The shared experts' gate: per token (N) backend, the anchor's share, for softmax_e with
 * shared experts; NULL otherwise, when every shared expert is scaled by etm_router_shared_const
 * (1, or 1 / G for softmax_e_shared_out). */
const float *etm_router_shared_gate(const etm_router *rt);
float etm_router_shared_const(const etm_router *rt);

/* dlogits(N,E) (writes) = gradient of the logits, given dscore(N,E), the gradient of the scores
 * from the gates, and dshared(N), that of the shared gate (used only when
 * etm_router_shared_gate is not NULL; may be NULL otherwise). dscore is used as scratch (the
 * balance-loss term is added to it). loss_scale multiplies the gradient of the aux and z
 * losses. */
void etm_router_backward(etm_router *rt, float *dlogits, float *dscore, const float *dshared,
                         float loss_scale);

/* Once per optimizer step: cut-off EMA update (ec, et), loss-free bias update (tc), step count. */
void etm_router_step_end(etm_router *rt);

etm_route_rule etm_router_rule(const etm_router *rt, etm_moe_mode mode);

/* Data parallelism (doc/distributed.md): what this step's TRAIN forwards recorded for step_end,
 * one record of E doubles per forward in order (ec, et: the forward's mean cut-off per expert;
 * tc loss-free: its top-k counts; other kinds: none). Returns the count and points *rec at them.
 * set replaces them, and the sums step_end uses, with n records (the gathered records of every
 * rank in global micro-batch order), so that step_end does exactly what one process that ran all
 * those forwards would do. */
int etm_router_step_records(const etm_router *rt, const double **rec);
void etm_router_set_step_records(etm_router *rt, const double *rec, int n);
/* et_cutoff_scope = step (ec, et): the TRAIN logits this step's forwards kept for step_end, rows
 * x E host floats in forward order; 0 rows for other scopes and kinds. set replaces them with the
 * gathered rows of every rank (global micro-batch order) from n_forwards forwards, so that the
 * cut-off is the k_target-th largest over the whole step's tokens, as in one process. */
size_t etm_router_step_logits(const etm_router *rt, const float **logits);
void etm_router_set_step_logits(etm_router *rt, const float *logits, size_t rows, int n_forwards);

/* State views (router-owned host arrays) and restore; set also uploads and clears the
 * accumulators of the current step. NULL arguments leave that part unchanged. */
void etm_router_get_state(const etm_router *rt, etm_router_state *out);
void etm_router_set_state(etm_router *rt, const float *threshold, const float *ema,
                          const float *bias, const int64_t *counters);

/* The cut-off of an ec or et router's last step_end (E values each, router-owned; the step's cut
 * whatever the scope, also in a step that ema_start_steps drops) and gap = cut minus the threshold
 * in force during that step (0 before the first EMA update): how far the EMA trails the batch.
 * Returns 0 (and leaves out unset) for tc routers and before the first step_end. */
typedef struct {
    const float *cut; /* (E) */
    const float *gap; /* (E) */
} etm_cutoff_step_info;
int etm_router_last_cutoff(const etm_router *rt, etm_cutoff_step_info *out);

/* The step-scope cut-off (the definitions above) of rows tokens: cut[e] (E) = the kt-th largest
 * of column e of logits (rows,E) (host, row-major), kt = floor(rows top_k / E) clamped to
 * [1, rows]; scratch holds rows floats. The whole step's rows in any order give the same values:
 * a caller may gather them from every rank. */
void etm_cutoff_of_rows(const float *logits, size_t rows, int E, int top_k, float *cut, float *scratch);

/* ec_pool_scope = step (router_pool.h): the next TRAIN forward of an ec router (et: one routing by
 * EC; a threshold forward drops it) takes host_mask
 * (N,E host, 1 = routed; the caller keeps it alive until then) as its selection instead of
 * selecting within its pools; scores, gates, losses and statistics are computed as usual. With
 * record = 0 that forward also records nothing for step_end (the routing pass); with 1 it
 * records as any TRAIN forward. Used once, then the router selects again; no effect on tc or
 * other modes (an EVAL forward leaves it armed). */
void etm_router_use_mask(etm_router *rt, const uint8_t *host_mask, int N, int record);

/* Ends an et router's EC warm-up now (its optimizer-step count becomes at least
 * et_warmup_steps), so that TRAIN forwards route by thresholds once an EMA exists; no effect on
 * other kinds. For comparisons that must exercise the threshold rule (check-backend). */
void etm_router_end_warmup(etm_router *rt);

#endif
