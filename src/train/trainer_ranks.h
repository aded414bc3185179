/* trainer_ranks.h (private to src/train): what the trainer's ranks exchange each step
 * (doc/distributed.md). The micro-batch records: per micro-batch, the loss and the routing
 * statistics the metrics sum and the routers' step records, packed as doubles (the integers are
 * exact) so that the ranks gather them and every rank sums them in global micro-batch order;
 * and the agreement checks: same configuration at start, every rank's status after its
 * micro-batches, identical replicas (--check-replicas). One process uses the same code with
 * etm_comm_single(). */
#ifndef ETM_TRAINER_RANKS_H
#define ETM_TRAINER_RANKS_H

#include <stdint.h>

#include "backend.h"
#include "comm.h"
#include "hparams.h"
#include "model.h"
#include "optim.h"
#include "routing_metrics.h"

/* Routing statistics of one MoE layer summed over one step's micro-batches. */
typedef struct {
    int64_t tokens, pairs, no_expert, dropped, padded;
    int64_t *load;               /* (E) */
    double aux, z;               /* summed over micro-batches */
    etm_routing_summary summary; /* the authors' routing metrics (routing_metrics.h) */
} etm_layer_acc;

/* One MoE layer's part of a micro-batch record, unpacked. The two arrays point into the packed
 * record (read-only views). */
typedef struct {
    double aux, z;                   /* the layer's aux and z losses */
    int64_t tokens, pairs, no_expert, dropped, padded;
    const double *load;              /* (E) tokens per expert */
    const double *router;            /* (E) the router's step record (router.h), if has_router */
    int has_router;                  /* 1: the forward added a router step record */
    int hist[2];                     /* tokens with 0 and 1 experts (routing_metrics.h) */
    double gate_sum, gate_sq;        /* routed gates' sum and sum of squares */
    double logit_sum, logit_sq;      /* router logits' sum and sum of squares */
    int cap_groups, cap_over, cap_under; /* capacity bound counts (routing_metrics.h) */
} etm_mb_layer_rec;

/* The step's micro-batch records of this rank and, after the gather, of all ranks. */
typedef struct {
    int E;               /* routed experts per MoE layer */
    int len;             /* doubles of one record */
    int local, total;    /* records of this rank (local_accum) and of the step (grad_accum) */
    double *mine;        /* (local, len) this rank's records */
    double *all;         /* (total, len) every rank's, in global micro-batch order */
    double *router_recs; /* (total * E + 1) one layer's router records, handed to its router */
    float *logits_all;   /* (logits_cap) et_cutoff_scope = step: one layer's gathered logits */
    size_t logits_cap;   /* floats logits_all holds */
} etm_mb_records;

/* Records for model m, local_accum micro-batches on each of world ranks. */
etm_mb_records *etm_mb_records_create(const etm_model *m, int local_accum, int world);
void etm_mb_records_free(etm_mb_records *recs);
/* Record a (0..local-1) of this rank: the loss ce and the last forward's statistics of m. */
void etm_mb_records_fill(etm_mb_records *recs, const etm_model *m, int a, double ce);
/* all = every rank's records in rank order (= global micro-batch order). */
int etm_mb_records_gather(etm_mb_records *recs, etm_comm *comm, etm_error *err);
/* Adds the statistics of all gathered records (global order) to acc (n_layer; MoE layers' used),
 * hands each layer's router the records of every micro-batch (etm_router_set_step_records) and
 * returns the sum of the losses, added in the same order as one process would. */
double etm_mb_records_apply(etm_mb_records *recs, etm_model *m, etm_layer_acc *acc);

/* et_cutoff_scope = step on more than one rank: every MoE layer's kept TRAIN logits (router.h
 * etm_router_step_logits) gathered from all ranks in rank order (= global micro-batch order) and
 * handed back to its router, so that step_end selects over the whole step's tokens. Every rank
 * keeps the same number of rows (the same micro-batches of the same size). */
int etm_mb_records_gather_logits(etm_mb_records *recs, etm_model *m, etm_comm *comm, etm_error *err);

/* Before setup: every rank's configuration and build must equal rank 0's; -1 naming the rank. */
int etm_ranks_check_config(etm_comm *comm, const etm_hparams *hp, etm_error *err);
/* Every rank's status after its micro-batches: failed, and whether it saw the stop flag
 * (stop_seen). Returns the first failed rank, -1 when none did, -2 when the exchange failed
 * (err set); *stop: some rank saw the flag. */
int etm_ranks_agree(etm_comm *comm, int failed, int stop_seen, int *stop, etm_error *err);
/* --check-replicas after step s (0-based): every rank must hold rank 0's parameters, optimizer
 * state and router state (FNV-1a fingerprints compared). */
int etm_ranks_check_replicas(etm_comm *comm, etm_backend *be, const etm_model *m,
                             const etm_optim *optim, int s, etm_error *err);

#endif
