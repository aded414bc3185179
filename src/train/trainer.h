/* trainer.h: the training loop as a library (`etmoe train` and `etmoe eval` are thin wrappers in
 * cli_train.c), and the evaluation of a model on validation shards.
 *
 * One optimizer step s (0-based; "step s+1" once completed, which is what logs, metrics and
 * checkpoints count):
 *   grad_accum times: next training micro-batch -> zero the gradients -> forward
 *   (ETM_MOE_TRAIN) -> backward with loss scale 1/grad_accum; the gradient of the step is the
 *   ordered sum ((g_0 + g_1) + g_2) + ... of the micro-batches' gradients (so it is the same
 *   float sum however the micro-batches are split over data-parallel ranks: comm.h); then
 *   etm_optim_step(s) (global-norm clipping, LR schedule, Muon / AdamW), then
 *   etm_model_step_end (every MoE layer's threshold EMA, warm-up counter, loss-free bias).
 * Around it: validation every eval_every steps and after the last, a metrics line per step, a
 * progress line every log_every steps, a checkpoint every ckpt_every steps and always at the end.
 * doc/training.md describes the run directory, resume, the metrics keys and the failure rules.
 *
 * Failure rules: a non-finite training loss, gradient norm, parameter or validation loss stops the
 * run with an error naming the step; nothing of that step is saved, so out_dir/latest.safetensors
 * stays the last good checkpoint. A stop request (the CLI's SIGINT/SIGTERM flag) lets the current
 * step finish, saves a checkpoint and returns success with result->interrupted set. */
#ifndef ETM_TRAINER_H
#define ETM_TRAINER_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "comm.h"
#include "common.h"
#include "hparams.h"
#include "model.h"

/* Names of the files in a run directory (out_dir). */
#define ETM_RUN_CONFIG "config.conf"           /* the effective configuration, written at start */
#define ETM_RUN_CHECKPOINT "latest.safetensors" /* the newest checkpoint (replaced atomically) */
#define ETM_RUN_METRICS "metrics.jsonl"         /* one JSON object per completed step */

typedef struct {
    int resume;             /* 1: continue from out_dir/latest.safetensors */
    int force;              /* 1: start over in an out_dir that holds another run or a checkpoint */
    int stop_at;            /* > 0: stop (with a checkpoint) once this many steps are completed,
                               as if max_steps were reached; the schedule still uses max_steps */
    FILE *progress;         /* progress lines (stderr in the CLI); NULL: silent */
    const volatile sig_atomic_t *stop_flag; /* nonzero: finish the step, checkpoint, return */
    /* Called before each optimizer step s (0-based) with the live model; for tests that need to
     * break a run at a given step. NULL: none. */
    void (*before_step)(void *ctx, etm_model *m, int step);
    void *hook_ctx;
    /* Data parallelism (doc/distributed.md): the job's communicator; NULL: one process. With
     * comm->size = N ranks, hp->grad_accum is per rank, a step is N x grad_accum micro-batches
     * (global micro-batch j = rank x grad_accum + a), and the run directory, metrics and
     * checkpoints (rank 0 writes them) are byte for byte those of one process run with
     * grad_accum = N x grad_accum. */
    etm_comm *comm;
    int check_replicas;     /* 1: after every step, compare every rank's parameters, optimizer
                               and router state with rank 0's (fingerprints); a difference fails */
} etm_train_options;

typedef struct {
    int start_step;         /* steps already completed when this call began (0, or the resumed step) */
    int step;               /* steps completed when it returned */
    int interrupted;        /* 1 when stop_flag ended the run early (a checkpoint was saved) */
    double train_loss;      /* token cross-entropy of the last step (NAN when no step ran) */
    double val_loss;        /* the last validation loss (NAN when none was computed) */
    double seconds;         /* wall time of this call */
    double tokens_per_sec;  /* training tokens / training time in this call */
} etm_train_result;

void etm_train_options_init(etm_train_options *o); /* zeroes: fresh run, silent, no hooks */

/* Trains the configuration hp (validated here) in the run directory hp->out_dir, as described at
 * the top of this file. Returns 0 (finished, reached stop_at, or interrupted) or -1 with a message
 * in err (bad setup, bad data, a non-finite value: the message names the step). result may be
 * NULL. */
int etm_train(const etm_hparams *hp, const etm_train_options *opt, etm_train_result *result,
              etm_error *err);

/* ---- evaluation ---------------------------------------------------------------------------- */

typedef enum {
    ETM_EVAL_THRESHOLD = 0, /* ETM_MOE_EVAL: causal, per token (ET/EC thresholds, TC top-k) */
    ETM_EVAL_BATCH          /* expert choice over each evaluation batch's pools (EC/ET models; TC
                               models route by top-k either way): the router's step counters are
                               set to zero for the pass, so it uses its batch rule; no updates */
} etm_eval_routing;

typedef struct {
    double loss;            /* mean token cross-entropy (nats), auxiliary losses excluded */
    double perplexity;      /* exp(loss) */
    int64_t tokens;         /* tokens evaluated */
    int sequences;          /* sequences evaluated */
    double mean_experts;    /* routed experts per token, averaged over MoE layers (0 when dense) */
    int64_t bytes;          /* UTF-8 bytes of the targets that are text (etm_evaluate_bytes), else 0 */
    double bits_per_byte;   /* nats of those targets / ln 2 / bytes; NAN without a byte table */
} etm_eval_result;

/* Mean token cross-entropy of m over the first max_seqs windows of the shards matching glob, in
 * order (max_seqs <= 0: every window once; never more than that, so no window counts twice), in
 * micro-batches of m->max_batch sequences of hp.seq_len tokens (the last one may be partial).
 * Nothing persists: ETM_EVAL_BATCH puts the router state back afterwards. Returns 0, or -1 with a
 * message (bad data; a non-finite loss names the sequences). */
int etm_evaluate(etm_model *m, const char *glob, int max_seqs, etm_eval_routing routing,
                 etm_eval_result *result, etm_error *err);
/* The same, and bits per byte: token_bytes (vocab_size entries) holds the UTF-8 bytes each token
 * decodes to, 0 for tokens that are not text (EOT, padding ids); a target with 0 bytes counts in
 * neither sum, as in nanochat's evaluate_bpb, so runs with different tokenizers compare. NULL:
 * no bits per byte (NAN). */
int etm_evaluate_bytes(etm_model *m, const char *glob, int max_seqs, etm_eval_routing routing,
                       const int32_t *token_bytes, etm_eval_result *result, etm_error *err);
/* The same split over the ranks of comm (NULL: one process; doc/distributed.md): batch i is
 * evaluated by rank i mod size, the per-token losses are all-gathered and every rank sums them in
 * batch and token order, so the result has the same bits as one process. Collective: every rank
 * calls it with the same arguments. */
int etm_evaluate_ranks(etm_model *m, const char *glob, int max_seqs, etm_eval_routing routing,
                       const int32_t *token_bytes, etm_comm *comm, etm_eval_result *result, etm_error *err);

#endif
