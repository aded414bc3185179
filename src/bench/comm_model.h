/* comm_model.h: on paper, what one data-parallel training step moves between ranks and how long
 * that takes against the step's compute (`etmoe bench CONFIG --comm-model --ranks N`,
 * doc/distributed.md). Everything follows from the hyperparameters (no model is built, so d12 and
 * d20 can be modelled on a laptop); tests/check_bench.c checks the counts against a real model.
 *
 * The step is doc/distributed.md's: hp->grad_accum micro-batches of batch_size x seq_len tokens
 * per step in all (the configuration as one process), A = grad_accum / N of them per rank.
 *  - gradient reduce (comm fold_sum): the float32 gradient cut into N shards; each rank sends its A
 *    micro-batch gradients' slices of the other shards, receives the other ranks' slices of its
 *    own, then receives the other shards of the sum (etm_comm_fold_bytes, rank 0's count);
 *  - Muon exchange: every Muon matrix from its owner, float32 (the momenta stay with their
 *    owners until a checkpoint): each rank receives those it does not own, about (N - 1) / N of
 *    the Muon elements (shares balanced by Newton-Schulz FLOPs), and a pipelined broadcast sends
 *    about as much as it receives;
 *  - router records: per micro-batch and MoE layer n_routed + 1 doubles from every other rank
 *    (the trainer adds 2.5 x as many statistics; either is kilobytes).
 * Time: max(bytes sent, bytes received) / the link's bandwidth per GPU and direction (a lower
 * bound: no latency, no overlap with compute). Compute: the training FLOPs of the step
 * (etm_hparams_train_flops_per_token with top_k routed experts per token, what ET's thresholds
 * aim at) and the Newton-Schulz FLOPs, both split evenly over the ranks, at mfu x peak.
 *
 * Expert parallelism, the next design (not built): the routed experts split over the ranks
 * (n_routed / N per rank and layer; modelled only for N <= n_routed), so their gradients and Muon updates stay on their rank;
 * the other parameters are reduced and exchanged as above; each MoE layer sends every token's
 * activation (d_model floats) to its top_k experts' ranks and back, forward and backward: 4 x
 * (tokens per rank) x top_k x d_model floats per layer, (N - 1) / N of them leaving the rank.
 *
 * Optimizer state per rank: AdamW's m and v (2 floats per AdamW element), Muon's momentum (1 per
 * Muon element), each allocated on every rank today. ZeRO-1 (not built) would keep each
 * parameter's state on its owner only: it saves (N - 1) / N of it; if the gradient reduce then
 * delivered each parameter's sum to its owner only and the owners all-gathered the updated
 * parameters, a step would move the reduce-scatter and one all-gather (etm_comm_fold_bytes'
 * count) and no separate Muon exchange. */
#ifndef ETM_COMM_MODEL_H
#define ETM_COMM_MODEL_H

#include <stdio.h>

#include "common.h"
#include "hparams.h"

/* The machine the model assumes (doc/distributed.md states why these numbers). */
typedef struct {
    double peak_flops;   /* per GPU, dense BF16 (H100/H200 SXM: 989e12) */
    double mfu;          /* fraction of the peak the step's compute reaches (0.4) */
    double nvlink_bps;   /* bytes/s per GPU and direction inside a node (NVLink 4: 450e9) */
    double network_bps;  /* bytes/s per GPU and direction between nodes (InfiniBand NDR, 400 Gb/s: 50e9) */
} etm_comm_machine;

/* H100/H200 SXM nodes of 8 GPUs, one 400 Gb/s NIC per GPU, 40% MFU. */
void etm_comm_machine_default(etm_comm_machine *mc);

typedef struct {
    int ranks, accum_per_rank;  /* N, A */
    double tokens_per_step;     /* grad_accum x batch_size x seq_len */
    double params;              /* all parameters */
    double muon_params;         /* elements of the Muon matrices (0 with matrix_optimizer = adamw) */
    double adamw_params;        /* the rest */
    double moe_layers;
    double flops_per_token;     /* training, forward + backward, top_k routed experts */
    double step_flops;          /* flops_per_token x tokens_per_step */
    double optim_flops;         /* Newton-Schulz FLOPs of one step (all ranks together) */
    /* bytes per rank per step */
    double reduce_sent, reduce_received;   /* gradient reduce (both phases) */
    double muon_sent, muon_received;       /* Muon exchange */
    double records_received;               /* router records */
    double sent, received;                 /* all of it */
    /* seconds per step */
    double nvlink_s, network_s;            /* communication over each link */
    double compute_s;                      /* per rank: (step_flops + optim_flops) / N at mfu x peak */
    double fwdbwd_s, optim_s;              /* its two parts */
    /* expert parallelism (above), modelled for 2 <= N <= n_routed: bytes per rank per step, time */
    int ep_possible;
    double expert_params;                  /* the routed experts' parameters */
    double ep_dense_bytes;                 /* max(sent, received) of the reduce + exchange of the rest */
    double ep_alltoall_bytes;              /* the tokens' all-to-all, sent (= received) */
    double ep_nvlink_s, ep_network_s;
    /* optimizer state (bytes per rank) and ZeRO-1 (above) */
    double adamw_state, muon_state;        /* today, on every rank */
    double zero1_saved;                    /* (N - 1) / N of both */
    double zero1_bytes;                    /* max(sent, received) per rank per step */
} etm_comm_model;

/* The model of hp on N ranks. -1 with a message when grad_accum is not a multiple of N or the
 * settings are invalid. */
int etm_comm_model_compute(const etm_hparams *hp, int ranks, const etm_comm_machine *mc,
                           etm_comm_model *out, etm_error *err);

/* A Markdown table of it (what doc/distributed.md quotes). */
void etm_comm_model_print(FILE *f, const char *name, const etm_comm_model *cm, const etm_comm_machine *mc);

#endif
