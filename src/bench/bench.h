/* bench.h: training-step throughput of the model a configuration describes, on random tokens:
 * tokens/s, achieved GFLOP/s and their ratio to a GEMM ceiling measured on the spot, with the
 * optimizer step timed apart from forward + backward, and (optionally) the time spent in every
 * backend operation. Used by `etmoe bench` (src/cli_bench.c) and `make bench`.
 *
 * What one step is: zero_grad + forward with targets (the "forward" time), backward ("backward"),
 * then etm_optim_step + etm_model_step_end (the "optimizer" time). Untimed warm-up steps come
 * first (the first one routes ET by expert choice and sets its thresholds, as in training).
 *
 * FLOPs, per token of a step (etm_model_train_flops_per_token):
 *     3 * (2 * P_active + L * 2 * 2 * H * hd * (T + 1) / 2)
 * P_active: matrix-multiply parameters one token touches (attention projections, the dense MLP
 * or the router + shared experts + the measured mean number of routed experts, the LM head; the
 * embedding is a lookup); the second term is causal attention (Q K^T and P V over (T+1)/2 keys on
 * average); times 3 for forward + backward (backward = 2 x forward). Norms, RoPE, ReLU^2, softmax,
 * routing and dispatch count nothing. tokens/s and GFLOP/s use the forward + backward time; the
 * optimizer's FLOPs are counted apart: its Newton-Schulz matrix products only, per Muon matrix
 * (rows, cols) with s = min(rows, cols), l = max(rows, cols): ns_steps * (4 s^2 l + 2 s^3), or
 * ns_steps * (3 s^2 l + s^3) with muon_ns_gram = symmetric (etm_newton_schulz_flops, optim.h).
 *
 * Ceiling: on the CPU backend, cblas_sgemm with the BLAS's own threading over all OpenMP threads
 * (etm_cpu_sgemm_gflops); on another backend, its gemm (etm_backend_gemm_gflops). Shape: the
 * dense MLP's up-projection (B*T tokens x D times D x ffn_hidden), best of ceiling_reps calls,
 * measured before the first timed step and after every timed step (steps + 1 measurements). A
 * shared machine's load drifts, so each step is compared with the mean of the two ceilings
 * measured just before and just after it; the reported ratio is the mean of these per-step
 * ratios, the best ratio their maximum. */
#ifndef ETM_BENCH_H
#define ETM_BENCH_H

#include <stdio.h>

#include "backend.h"
#include "comm_timed.h"
#include "common.h"
#include "hparams.h"
#include "param.h"
#include "profiler.h"

typedef struct {
    int steps;        /* timed steps, >= 1 */
    int warmup;       /* untimed steps before them, >= 0 */
    int profile;      /* 1: time every backend operation (synchronising after each) */
    int ceiling_reps; /* sgemm calls per ceiling measurement, >= 1 */
    etm_comm *comm;   /* NULL or a job of one rank: one process; else every rank of a data-parallel
                         job calls etm_bench_run with the same settings (below) */
} etm_bench_options;

/* steps 3, warmup 1, no profile, ceiling_reps 5, comm NULL */
void etm_bench_default_options(etm_bench_options *opt);

/* The per-rank figures a data-parallel run gathers (min, max and sum over ranks; bench.c's
 * figure table names them). Each is a mean per timed step on one rank. */
typedef enum {
    ETM_BENCH_FIG_TOKENS_PER_S, /* forward + backward tokens/s */
    ETM_BENCH_FIG_GFLOPS,       /* forward + backward GFLOP/s */
    ETM_BENCH_FIG_RATIO,        /* of the ceiling around each step */
    ETM_BENCH_FIG_CEILING,      /* the ceiling, GFLOP/s */
    ETM_BENCH_FIG_FWDBWD_S,     /* forward + backward, s */
    ETM_BENCH_FIG_REDUCE_S,     /* gradient reduce, s */
    ETM_BENCH_FIG_RECORDS_S,    /* router records, s */
    ETM_BENCH_FIG_OPT_COMPUTE_S,/* optimizer compute, s */
    ETM_BENCH_FIG_EXCHANGE_S,   /* Muon exchange, s */
    ETM_BENCH_FIG_OPT_S,        /* optimizer step = compute + exchange, s */
    ETM_BENCH_FIG_COMM_S,       /* inside all comm calls, s */
    ETM_BENCH_FIG_STEP_S,       /* whole step, s */
    ETM_BENCH_FIG_OPTIM_FLOPS,  /* Newton-Schulz FLOPs owned */
    ETM_BENCH_FIG_MUON_OWNED,   /* Muon elements owned */
    ETM_BENCH_N_FIGURES
} etm_bench_figure;

typedef struct {
    /* the model and its batch */
    char backend[32];          /* backend name */
    int threads;               /* OpenMP threads (1 in a serial build) */
    int batch, seq_len;        /* B sequences of T tokens per step */
    double tokens_per_step;    /* B * T */
    double params;             /* all parameters */
    double active_params;      /* matrix-multiply parameters per token (P_active above) */
    double routed_per_token;   /* mean routed experts per token, over MoE layers and timed steps */
    int timed_threshold_steps; /* timed steps whose MoE layers routed by threshold (ET after warm-up) */
    double flops_per_token;    /* the formula above */
    double flops_per_step;     /* flops_per_token * B * T */
    double optim_flops;        /* Newton-Schulz FLOPs of one optimizer step (0 without Muon) */

    /* timings (seconds), mean over the timed steps and best single step */
    int steps;
    double fwd_s, bwd_s, opt_s;          /* mean forward, backward, optimizer */
    double best_fwdbwd_s, best_opt_s;    /* best forward + backward; best optimizer */
    double best_step_s;                  /* best forward + backward + optimizer */

    /* derived */
    double tokens_per_s;      /* B T / mean (forward + backward) */
    double gflops;            /* flops_per_step / mean (forward + backward), 1e9 FLOP/s */
    double best_tokens_per_s; /* the same from the best forward + backward */
    double best_gflops;
    double step_tokens_per_s; /* B T / mean (forward + backward + optimizer) */
    double optim_gflops;      /* optim_flops / mean optimizer time */

    /* the ceiling (GFLOP/s) */
    int ceiling_m, ceiling_n, ceiling_k;      /* GEMM shape */
    double ceiling_before, ceiling_after;     /* the first and the last measurement */
    double ceiling, ceiling_min, ceiling_max; /* mean, least and largest of all steps + 1 */
    double ratio;      /* mean over timed steps of (step GFLOP/s) / (ceiling around the step) */
    double best_ratio; /* the largest of those per-step ratios */
    double load_before, load_after;           /* 1-minute load average (-1 when unknown) */

    int profiled;                                /* whether profile[] is filled */
    etm_bench_profile profile[ETM_BENCH_PHASES]; /* forward + backward, optimizer */

    /* data parallelism (ranks > 1; all zero in one process): this rank's mean per timed step */
    int ranks;               /* ranks of the job (1: one process) */
    double reduce_s;         /* the gradient reduce: download, comm fold_sum, upload */
    double records_s;        /* the router records' all-gather and hand-over to the routers */
    double opt_compute_s;    /* etm_optim_step (own Muon share, all AdamW) + step_end */
    double exchange_s;       /* etm_optim_exchange: Muon parameters + momenta from their owners */
    double comm_s[ETM_COMM_N_OPS];        /* inside the comm calls (comm_timed.h), by kind */
    double comm_sent[ETM_COMM_N_OPS];     /* bytes sent per step, by kind */
    double comm_received[ETM_COMM_N_OPS]; /* bytes received per step, by kind */
    double muon_owned;       /* Muon matrices' elements this rank updates */
    double optim_flops_owned;/* Newton-Schulz FLOPs of those (optim_flops over all ranks) */
    /* every rank's figures (etm_bench_figure), gathered: least, largest, sum over ranks */
    double fig_min[ETM_BENCH_N_FIGURES], fig_max[ETM_BENCH_N_FIGURES], fig_sum[ETM_BENCH_N_FIGURES];
} etm_bench_result;

/* Builds the model hp describes (micro-batches of hp->batch_size sequences of hp->seq_len) and
 * its optimizer on be, runs opt->warmup untimed then opt->steps timed training steps on random
 * tokens (seed hp->seed), and fills out. 0, or -1 with a message (bad settings, a failed step).
 *
 * With opt->comm of N > 1 ranks every rank runs the configured batch (its own random tokens,
 * seed hp->seed + rank) and a step is the data-parallel step of doc/distributed.md: after the
 * backward, the gradient reduce (comm fold_sum over host memory), the router records' all-gather
 * (etm_router_set_step_records), the optimizer step on this rank's Muon share, the Muon exchange
 * (etm_optim_exchange, Muon shared by etm_optim_share), step_end. The communication is timed
 * inside the comm calls (comm_timed.h); every rank's figures are gathered into fig_min/max/sum
 * (collective: all ranks must call this with the same settings and steps). */
int etm_bench_run(etm_backend *be, const etm_hparams *hp, const etm_bench_options *opt,
                  etm_bench_result *out, etm_error *err);

/* The result as readable text (a few lines; the profile tables when profiled; with ranks > 1 the
 * ranks' figures, min and max over ranks, and the communication). */
void etm_bench_print(FILE *f, const etm_bench_result *r);

/* Newton-Schulz FLOPs of one optimizer step over a parameter table (the model's m->table), by
 * the formula above: 0 unless hp->matrix_optimizer is Muon; matrix-group tensors only. */
double etm_bench_optim_flops(const etm_hparams *hp, const etm_param *table, int n_tensors);

/* The 1-minute load average from /proc/loadavg, or -1 where there is none. */
double etm_load_average(void);

#endif
