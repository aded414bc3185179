/* optim.h: the optimizers: AdamW for the embedding, LM head and routers, Muon (or AdamW) for the
 * hidden matrices, the learning-rate schedule, the Muon momentum warm-up and global gradient-norm
 * clipping. Everything runs through the backend's operations (backends/backend.h), so the same
 * code drives the CPU and CUDA backends.
 *
 * One optimizer step, given the gradients of every parameter (summed or averaged by the caller):
 *   1. the global gradient norm sqrt(sum of squares of every gradient), parameters in table order;
 *      a non-finite norm stops the step with an error before anything changes;
 *   2. clipping: with grad_clip > 0 and norm > grad_clip, every gradient is scaled IN PLACE by
 *      grad_clip / norm;
 *   3. each parameter's update with its group's learning rate (lr_matrix * lr_expert_scale for the
 *      routed experts' matrices, param.h routed_expert) times the schedule's multiplier, and its
 *      decay wd (matrix_weight_decay, or weight_decay when it inherits, for group matrix;
 *      weight_decay for embed, head and router):
 *      AdamW: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *             p -= lr (m / (1-b1^t) / (sqrt(v / (1-b2^t)) + eps) + wd p),   t = step + 1;
 *      Muon:  m = mu m + (1-mu) g;  u = (1-mu) g + mu m  (Nesterov);
 *             u = NewtonSchulz(u) per matrix;  p = (1 - lr wd) p - lr max(1, rows/cols)^0.5 u,
 *             mu warming up linearly from muon_momentum_start to muon_momentum_end.
 *
 * Newton-Schulz (Keller Jordan's quintic iteration, as in nanochat): X = G / (||G||_F + 1e-7), then
 * ns_steps times A = X X^T, B = b A + c A A, X = a X + B X, with (a, b, c) = (3.4445, -4.7750,
 * 2.0315). It maps G = U S V^T to about U V^T (singular values pushed into roughly [0.7, 1.2]).
 * A tall matrix (rows > cols) is iterated as its transpose: A = X^T X, X = a X + X B, the same
 * result without moving memory. muon_ns_gram = symmetric computes A and A A (both symmetric) as
 * upper triangles mirrored (backend syrk_batched): 3 s^2 l + s^3 FLOPs per iteration instead of
 * 4 s^2 l + 2 s^3, a result close to the full path's (tests/check_optim.c) but not its bits.
 * A 3-D parameter (E, rows, cols), e.g. the experts of an MoE layer, is E matrices, each orthogonalised on its own (muon_expert_layout = per_expert), or one (E rows,
 * cols) matrix with shape scale max(1, E rows / cols)^0.5 (stacked, as the authors' TC code). */
#ifndef ETM_OPTIM_H
#define ETM_OPTIM_H

#include <stdint.h>

#include "backend.h"
#include "comm.h"
#include "hparams.h"
#include "param.h"


/* One tensor of optimizer state, for checkpoints: "opt.<param>.m" and "opt.<param>.v" (AdamW),
 * "opt.<param>.momentum" (Muon), each of its parameter's shape. */
typedef struct {
    char *name;
    float *data;      /* backend memory */
    int ndim;
    int64_t shape[3]; /* (ndim) */
} etm_optim_state;

typedef struct {
    double grad_norm;    /* global norm before clipping */
    float clip_scale;    /* factor applied to the gradients (1 when not clipped) */
    float lr_mult;       /* schedule multiplier of this step */
    float muon_momentum; /* mu of this step */
} etm_optim_stats;

typedef struct etm_optim etm_optim;

/* An optimizer for n parameters under hp's settings (a copy of hp is kept). Fails, naming the
 * parameter, for an empty or duplicate name, a bad shape or group, or a Muon matrix that is not
 * 2-D or 3-D. State starts at zero. */
etm_optim *etm_optim_create(etm_backend *be, const etm_hparams *hp, const etm_param *params,
                            int n_params, etm_error *err);
void etm_optim_free(etm_optim *opt);

/* Optimizer step number step (0 for the first; it sets the schedule and AdamW's bias correction).
 * stats may be NULL. Fails, changing nothing, when the gradient norm is not finite. */
int etm_optim_step(etm_optim *opt, int step, etm_optim_stats *stats, etm_error *err);

/* Distributed Muon (doc/distributed.md): each Muon parameter gets an owner rank (costliest
 * first, to the rank least loaded by Newton-Schulz FLOPs); etm_optim_step on rank `rank` then
 * updates only the Muon parameters it owns (AdamW ones everywhere), and etm_optim_exchange, called
 * by every rank after the step, broadcasts each Muon parameter from its owner. The result is the
 * one-process step, bit for bit: the same arithmetic, done once. The momenta stay with their
 * owners (the only rank that reads one); etm_optim_sync_state, called by every rank, broadcasts
 * them too, so that every rank holds the whole state: before a checkpoint is written or the state
 * compared. Default: rank 0 of 1. */
void etm_optim_share(etm_optim *opt, int rank, int size);
int etm_optim_exchange(etm_optim *opt, etm_comm *c, etm_error *err);
int etm_optim_sync_state(etm_optim *opt, etm_comm *c, etm_error *err);
/* The rank that updates parameter i (etm_optim_share), or -1 when it is not a Muon parameter. */
int etm_optim_muon_owner(const etm_optim *opt, int i);

/* The learning-rate multiplier of step (0-based): linear warm-up (step + 1) / warmup_steps, then 1,
 * then over the last W = round(decay_fraction * max_steps) steps linear decay: at step s >
 * max_steps - W, p = (max_steps - s) / W and the multiplier is p + (1 - p) final_lr_frac (it
 * reaches final_lr_frac at step max_steps, just after the last). Where warm-up and decay overlap,
 * the smaller wins. */
float etm_lr_multiplier(const etm_hparams *hp, int step);
/* Muon momentum of step: start + min(step / muon_warmup_steps, 1) (end - start). */
float etm_muon_momentum(const etm_hparams *hp, int step);

/* Orthogonalises count matrices (rows, cols), stored one after another in X (backend memory), in
 * place, with steps Newton-Schulz iterations, the symmetric products as gram says (muon_ns_gram).
 * work is backend memory of etm_newton_schulz_work(count, rows, cols) floats. */
void etm_newton_schulz(etm_backend *be, float *X, int count, int rows, int cols, int steps,
                       etm_ns_gram gram, float *work);
size_t etm_newton_schulz_work(int count, int rows, int cols);
/* Multiply-add FLOPs (2 per multiply-add) of Newton-Schulz on one (rows, cols) matrix under hp's
 * ns_steps and muon_ns_gram, s <= l its sides: ns_steps (4 s^2 l + 2 s^3) with full products
 * (X X^T and A A as GEMMs, X' from B X), ns_steps (3 s^2 l + s^3) with symmetric ones (their upper
 * triangles). The count etmoe bench reports and etm_optim_share balances. */
double etm_newton_schulz_flops(const etm_hparams *hp, int rows, int cols);

/* The optimizer's state tensors, in a fixed order (parameter order; m before v). */
int etm_optim_state_count(const etm_optim *opt);
const etm_optim_state *etm_optim_state_at(const etm_optim *opt, int i);
/* The backend the state tensors live on (for the checkpoint layer's save and load). */
etm_backend *etm_optim_backend(const etm_optim *opt);

#endif
