/* model.h: the nanochat-style decoder-only transformer (fp32), its parameters, gradients,
 * activations, training forward/backward and KV-cache decoding.
 *
 *   x   = norm(wte[tokens])                                  untied embedding, RMSNorm (no weights)
 *   per layer l:
 *     x += wo . attn(qknorm(rope(wq norm(x))), qknorm(rope(wk norm(x))), wv norm(x))
 *     x += mlp(norm(x))        dense ReLU^2 MLP for l < dense_layers (or router == dense),
 *                              else the MoE layer of src/moe.h (router tc | ec | et)
 *   logits = lm_head norm(x);  loss = CE(cap * tanh(logits / cap)) + MoE added losses
 *
 * Attention is causal grouped-query attention (n_kv_head key/value heads), RoPE with base
 * rope_base on the two halves of each head, QK-norm (RMSNorm per head, after RoPE). No biases.
 * Linear weights are stored (out, in) and applied as y = x W^T.
 *
 * Every operation goes through the backend's op table (backends/backend.h), so all tensors
 * below are backend memory unless marked "host".
 *
 * Parameter names (the checkpoint tensor names) and their order, which is also the order in
 * which etm_model_create draws their initial values from one RNG seeded with hp->seed:
 *   name                          shape         group   initial values
 *   "wte"                         (V, D)        embed   N(0, 1)
 *   for l = 0 .. L-1:
 *   "layers.l.attn.wq"            (H*hd, D)     matrix  N(0, s)
 *   "layers.l.attn.wk"            (Hkv*hd, D)   matrix  N(0, s)
 *   "layers.l.attn.wv"            (Hkv*hd, D)   matrix  N(0, s)
 *   "layers.l.attn.wo"            (D, H*hd)     matrix  zero
 *   dense layers:
 *   "layers.l.mlp.up"             (F, D)        matrix  N(0, s)
 *   "layers.l.mlp.down"           (D, F)        matrix  zero
 *   MoE layers:
 *   "layers.l.moe.router"         (E, D)        router  N(0, 1/D), i.e. std 1/sqrt(D)
 *   "layers.l.moe.up"             (E, Hx, D)    matrix  N(0, s) per expert
 *   "layers.l.moe.down"           (E, D, Hx)    matrix  zero
 *   "layers.l.moe.shared_up"      (S, Hx, D)    matrix  N(0, s)    only when S > 0
 *   "layers.l.moe.shared_down"    (S, D, Hx)    matrix  zero       only when S > 0
 *   "lm_head"                     (V, D)        head    zero
 * with s = min(1, sqrt(fan_out / fan_in)) / sqrt(fan_in) for a matrix (fan_out, fan_in) (per
 * expert for stacked expert tensors). Values are drawn in row-major order of each tensor; zero
 * tensors draw nothing. The optimizer sees each stacked (E, rows, cols) tensor as E matrices.
 *
 * Use: create; per micro-batch forward (with targets) and backward; per optimizer step
 * zero_grad before the micro-batches, etm_optim_step on m->table, then etm_model_step_end. */
#ifndef ETM_MODEL_H
#define ETM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "common.h"
#include "hparams.h"
#include "moe.h"
#include "param.h"


/* Weights of one layer: pointers into the parameter (or gradient) block. */
typedef struct {
    float *wq;           /* (H*hd, D) */
    float *wk;           /* (Hkv*hd, D) */
    float *wv;           /* (Hkv*hd, D) */
    float *wo;           /* (D, H*hd) */
    float *mlp_up;       /* (F, D) dense layers; NULL in MoE layers */
    float *mlp_down;     /* (D, F) dense layers; NULL in MoE layers */
    etm_moe_weights moe; /* MoE layers; all NULL in dense layers */
} etm_layer_weights;

typedef struct {
    float *wte;                  /* (V, D) token embedding */
    etm_layer_weights *layers;   /* host (L) */
    float *lm_head;              /* (V, D) */
} etm_weights;

/* What the backward pass needs from one layer's forward (B*T = N tokens). */
typedef struct {
    float *ln1;      /* (N, D) norm(x) entering attention */
    float *ln1_rstd; /* (N) */
    float *q;        /* (N, H, hd) after RoPE and QK-norm */
    float *q_rstd;   /* (N*H) */
    float *k;        /* (N, Hkv, hd) after RoPE and QK-norm */
    float *k_rstd;   /* (N*Hkv) */
    float *v;        /* (N, Hkv, hd) */
    float *att;      /* (N, H*hd) attention output before wo */
    float *lse;      /* (B, H, T) log-sum-exp of the attention rows */
    float *ln2;      /* (N, D) norm(x) entering the MLP */
    float *ln2_rstd; /* (N) */
    float *h;        /* (N, F) dense layers: up-projection before ReLU^2; NULL in MoE layers */
    float *a;        /* (N, F) dense layers: relu(h)^2 */
} etm_layer_acts;

typedef struct {
    int32_t *tokens;   /* (N) */
    int32_t *targets;  /* (N) negative = ignored */
    float *x0;         /* (N, D) norm(wte[tokens]) */
    float *x0_rstd;    /* (N) */
    float *resid;      /* (N, D) the residual stream (only its final value is kept) */
    etm_layer_acts *layers; /* host (L) */
    float *mlp_out;    /* (N, D) MoE output before it joins the stream */
    float *lnf;        /* (N, D) norm(x) entering the LM head */
    float *lnf_rstd;   /* (N) */
    float *logits;     /* (N, V) raw logits (before the soft cap) */
    float *losses;     /* (N) per-token cross-entropy */
} etm_acts;

/* Scratch for the backward pass, shared by all layers. */
typedef struct {
    float *dlogits;  /* (N, V) */
    float *dresid;   /* (N, D) gradient of the residual stream */
    float *dln;      /* (N, D) gradient of a norm output */
    float *datt;     /* (N, H*hd) */
    float *dqn;      /* (N, H*hd) gradient of q after QK-norm */
    float *dq;       /* (N, H*hd) gradient of q before QK-norm, then before RoPE */
    float *dkn;      /* (N, Hkv*hd) */
    float *dk;       /* (N, Hkv*hd) */
    float *dv;       /* (N, Hkv*hd) */
    float *dh;       /* (N, F) */
    float *da;       /* (N, F) */
    float *demb;     /* (N, D) gradient of wte[tokens] */
} etm_grad_scratch;

typedef struct {
    etm_hparams hp;       /* a copy of the settings */
    etm_backend *be;      /* not owned */
    int max_batch;        /* B the activations were sized for (sequences of hp.seq_len) */

    /* parameters and gradients: one block each, same layout */
    size_t n_params;      /* total floats */
    float *params_memory; /* (n_params) */
    float *grads_memory;  /* (n_params) */
    etm_weights w;        /* pointers into params_memory */
    etm_weights g;        /* pointers into grads_memory */
    etm_param *table;     /* host (n_tensors) in the documented order: name, group, data and grad
                             (pointers into the two blocks), ndim, shape */
    int n_tensors;

    /* MoE layers (NULL for dense layers); the routers' state lives in them */
    etm_moe_layer **moe;  /* host (L) */

    /* rotary tables */
    float *rope_cos;      /* (T, hd/2) */
    float *rope_sin;      /* (T, hd/2) */

    /* activations of the last forward */
    float *acts_memory;
    etm_acts acts;
    float *scratch_memory;
    etm_grad_scratch scratch;
    int last_B, last_T;      /* shape of the last forward (0 before any) */
    int last_has_targets;    /* whether it computed a loss (backward needs one) */
    int n_valid;             /* targets >= 0 in the last forward */
    float *host_losses;      /* host (N) per-token losses of the last forward */

    /* ec_pool_scope = step: the routing pass (etm_model_route_step); NULL until the first */
    struct etm_ec_pool *pool;  /* the pooled selection (router_pool.h) */
    float *pool_resid;         /* (pool_mb, N, D) backend: each micro-batch's residual stream */
    float *pool_mine;          /* host (pool_mb N, E): this process's logits of one layer */
    float *pool_logits;        /* host (pool_all N, E): the step's logits of one layer */
    uint8_t *pool_all_mask;    /* host (pool_all N, E): the step's selection of one layer */
    uint8_t *pool_masks;       /* host (L, pool_mb, N, E): the selections the forwards will use */
    int pool_mb, pool_all, pool_N; /* micro-batches here, in the step, tokens each (as sized) */
} etm_model;

/* Builds a model for micro-batches of up to max_batch sequences of hp->seq_len tokens and
 * initialises its parameters from hp->seed (see the top of this file). NULL with a message in
 * err when the settings are inconsistent. be must outlive the model. */
etm_model *etm_model_create(etm_backend *be, const etm_hparams *hp, int max_batch, etm_error *err);
void etm_model_free(etm_model *m);

/* The memory a model needs, in bytes, counted in double so that no setting can overflow it. */
typedef struct {
    double params;      /* weights */
    double grads;       /* their gradients (always allocated) */
    double optimizer;   /* AdamW m and v or Muon momentum and work buffers (0 unless training) */
    double activations; /* forward activations and backward scratch for max_batch sequences */
    double routing;     /* MoE layers: router scores and masks, dispatch tables, expert pair
                         * buffers (sized for twice top_k experts per token on average) */
    double total;       /* the sum */
    double n_params;    /* parameter count */
} etm_memory_estimate;

/* Estimates what etm_model_create (and, when training, etm_optim_create) will allocate for
 * micro-batches of max_batch sequences: a little more than a tiny model's measured allocations
 * (tests/check_model.c), in closed form, so it can be printed and checked before anything is
 * allocated. Settings need not be valid (nothing is divided by zero). */
void etm_model_memory_estimate(const etm_hparams *hp, int max_batch, int training, etm_memory_estimate *out);

/* Memory this machine can give a process: physical memory (sysconf), in bytes; 0 if unknown. */
double etm_host_memory_bytes(void);

/* 0 when est fits in this machine's memory (est->total <= etm_host_memory_bytes()), else -1 with
 * "needs X GiB (parameters ..., ...); this machine has Y GiB" in err. */
int etm_memory_check(const etm_memory_estimate *est, etm_error *err);

/* Forward pass over B sequences of T tokens (host tokens (B*T), each in [0, V)); 1 <= B <=
 * max_batch, 1 <= T <= seq_len (MoE layers may require T == seq_len; see moe.h). With targets
 * (host (B*T), a negative target is ignored) *loss gets the mean cross-entropy over the valid
 * targets plus the MoE layers' added losses (aux, z); without, only the logits are computed and
 * *loss is 0. mode is passed to every MoE layer. Keeps the activations for backward. Returns 0,
 * or -1 with a message in err (bad shape, token out of range). */
int etm_model_forward(etm_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                      etm_moe_mode mode, double *loss, etm_error *err);

/* ec_pool_scope = step (router_pool.h, doc/distributed.md): the routing pass of one optimizer
 * step, while the MoE layers route by expert choice (etm_model_step_routing_needed; -1 otherwise). tokens holds this process's n_mb micro-batches of B sequences of T tokens (host,
 * n_mb B T), which are micro-batches first_mb .. first_mb + n_mb - 1 of the step's n_all. The
 * micro-batches advance together layer by layer without gradients, keeping only their residual
 * streams; at each MoE layer their router logits (etm_moe_router_logits) are pooled in
 * micro-batch order (gather, when not NULL, must give every process the n_all micro-batches'
 * logits in order: all[(first_mb + i) ...] = mine[i ...]; NULL when n_all == n_mb), each expert
 * takes its top k_target of the pool, and the stream advances through the layer with that
 * selection. The selections are kept for etm_model_use_step_routing. Returns 0, or -1 with a
 * message. The activations of the last forward are overwritten. */
typedef int (*etm_pool_gather_fn)(void *ctx, const float *mine, size_t n_floats, float *all, etm_error *err);
int etm_model_route_step(etm_model *m, const int32_t *tokens, int n_mb, int B, int T, int first_mb,
                         int n_all, etm_pool_gather_fn gather, void *ctx, etm_error *err);
/* Whether this step's TRAIN forwards want the routing pass: ec_pool_scope = step and the MoE
 * layers route by expert choice in TRAIN now (ec always; et during its EC warm-up). */
int etm_model_step_routing_needed(const etm_model *m);
/* Arms every MoE layer's router with micro-batch a's (0..n_mb-1 of the last routing pass)
 * selection for the next TRAIN forward (router.h etm_router_use_mask; that forward records for
 * step_end as usual). */
void etm_model_use_step_routing(etm_model *m, int a);
/* The selection of micro-batch a at MoE layer l from the last routing pass: (N, E) host. */
const uint8_t *etm_model_step_mask(const etm_model *m, int l, int a);

/* Accumulates loss_scale * d(loss)/d(params) of the last forward into the gradient block
 * (loss_scale = 1/grad_accum averages micro-batches). The last forward must have had targets.
 * Returns 0, or -1 with a message. */
int etm_model_backward(etm_model *m, float loss_scale, etm_error *err);

/* Sets every gradient to zero. */
void etm_model_zero_grad(etm_model *m);

/* Soft-capped logits (cap * tanh(logits / cap)) of the last forward: host out (rows, V) gets
 * rows first..first+rows-1 of its (B*T, V) logits. Returns 0, or -1 with a message when there
 * was no forward or the rows are outside it. */
int etm_model_logits(etm_model *m, float *out, int first, int rows, etm_error *err);

/* Once per optimizer step: the routers' threshold / bias updates (etm_moe_step_end per layer). */
void etm_model_step_end(etm_model *m);

/* All parameters (floats). */
size_t etm_model_num_params(const etm_model *m);

/* Matrix-multiply parameters one token touches in a forward: attention projections, the dense
 * MLP or the router + shared experts + routed_per_token routed experts, and the LM head (the
 * embedding is a lookup and does not count). */
double etm_model_active_matmul_params(const etm_model *m, double routed_per_token);

/* Training FLOPs per token for sequences of T tokens: 3 * (2 * active matmul parameters +
 * causal attention 2 * 2 * H * hd * (T + 1) / 2 per layer), i.e. forward + twice that backward. */
double etm_model_train_flops_per_token(const etm_model *m, int T, double routed_per_token);
/* The same two from the hyperparameters alone (no model needed: `etmoe bench --comm-model`). */
double etm_hparams_active_matmul_params(const etm_hparams *hp, double routed_per_token);
double etm_hparams_train_flops_per_token(const etm_hparams *hp, int T, double routed_per_token);

/* ---- KV-cache decoding --------------------------------------------------------------------- */
/* Keys and values of one sequence for every layer, plus one-token scratch. MoE layers route
 * each token alone with the frozen router state (ETM_MOE_EVAL): by thresholds for ET and EC, by
 * top-k for TC, so decoding gives the logits of a full ETM_MOE_EVAL forward. One exception, from
 * router.h: an ec/et layer whose thresholds were never updated (no etm_model_step_end after a
 * training forward) routes by expert choice, which depends on the batch, so its one-token
 * decoding differs from a full forward. Load or train thresholds first. */
typedef struct etm_kv_cache etm_kv_cache;

/* A cache for sequences of up to max_len <= hp.seq_len tokens. NULL with a message on error. */
etm_kv_cache *etm_kv_cache_create(etm_model *m, int max_len, etm_error *err);
void etm_kv_cache_free(etm_kv_cache *c);

/* Feeds token at position pos (0 <= pos <= number of tokens already in the cache: a smaller pos
 * rewinds, dropping later tokens) and returns the soft-capped logits of the next token (host
 * (V), owned by the cache, valid until the next call); NULL with a message on error. The router
 * state is read from the model at each call. */
const float *etm_model_decode(etm_model *m, etm_kv_cache *c, int32_t token, int pos, etm_error *err);

/* The cache's one-token copy of MoE layer `layer` (NULL for a dense layer): after a decode call
 * its etm_moe_last_stats / etm_moe_mask describe how that call's token was routed. */
const etm_moe_layer *etm_kv_cache_moe(const etm_kv_cache *c, int layer);

#endif
