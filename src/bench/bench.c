/* bench.c: training-step throughput of a configured model (bench.h): the timed training loop and
 * the GEMM ceiling around it; with --profile it runs on the per-operation profiler (profiler.h). */
#include <config.h>

#include "bench.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "backend_bench.h"
#include "cpu/cpu_bench.h"
#include "model.h"
#include "optim.h"
#include "profiler.h"
#include "rng.h"
#include "router.h"

void etm_bench_default_options(etm_bench_options *opt) {
    opt->steps = 3;
    opt->warmup = 1;
    opt->profile = 0;
    opt->ceiling_reps = 5;
    opt->comm = NULL;
}

double etm_load_average(void) {
    double l = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1.0;
        fclose(f);
    }
    return l;
}

/* Newton-Schulz FLOPs of one optimizer step for one tensor (bench.h's formula); 0 unless Muon. */
static double tensor_optim_flops(const etm_hparams *hp, const etm_param *p) {
    if (hp->matrix_optimizer != ETM_OPT_MUON || p->group != ETM_PARAM_MATRIX || p->ndim < 2) return 0.0;
    double count = p->ndim == 3 ? (double)p->shape[0] : 1.0;
    return count * etm_newton_schulz_flops(hp, (int)p->shape[p->ndim - 2], (int)p->shape[p->ndim - 1]);
}

double etm_bench_optim_flops(const etm_hparams *hp, const etm_param *table, int n_tensors) {
    double flops = 0.0;
    for (int i = 0; i < n_tensors; i++) flops += tensor_optim_flops(hp, &table[i]);
    return flops;
}

/* ---- the timed loop ------------------------------------------------------------------------- */

static int openmp_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* GFLOP/s of the ceiling GEMM (see bench.h) on the real backend. */
static double ceiling_gflops(etm_backend *be, int M, int N, int K, int reps) {
    if (!strcmp(be->name, "cpu")) return etm_cpu_sgemm_gflops(M, N, K, reps);
    return etm_backend_gemm_gflops(be, M, N, K, reps);
}

/* Whether the model's MoE layers would route the next training forward by threshold. */
static int routes_by_threshold(const etm_model *m) {
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) return etm_router_rule(etm_moe_router(m->moe[l]), ETM_MOE_TRAIN) == ETM_RULE_THRESHOLD;
    return 0;
}

/* Mean routed experts per token over the MoE layers of the last forward (0 without any). */
static double routed_per_token(const etm_model *m) {
    double r = 0.0;
    int n = 0;
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) {
            r += etm_moe_last_stats(m->moe[l])->mean_experts;
            n++;
        }
    return n ? r / n : 0.0;
}

/* ---- data parallelism (opt->comm of more than one rank) -------------------------------------- */

/* What a rank of a data-parallel bench holds beside the model (doc/distributed.md's step). */
typedef struct {
    etm_comm *comm;   /* the timing wrapper around opt->comm (comm_timed.h) */
    float *grad_host; /* (n_params) this rank's gradient, host memory */
    float *grad_sum;  /* (n_params) the reduced gradient, host memory */
    double *rec;      /* (rec_len) this rank's router records: per MoE layer E doubles + a flag */
    double *rec_all;  /* (ranks x rec_len) every rank's, in rank order */
    double *rr;       /* (ranks x E) one layer's records for its router */
    int rec_len;
} dp_state;

static void dp_free(dp_state *d) {
    if (d->comm) d->comm->destroy(d->comm);
    free(d->grad_host);
    free(d->grad_sum);
    free(d->rec);
    free(d->rec_all);
    free(d->rr);
}

static void dp_init(dp_state *d, etm_comm *comm, const etm_model *m) {
    int E = m->hp.n_routed, P = comm->size;
    d->comm = etm_comm_timed_create(comm);
    d->grad_host = etm_malloc(m->n_params * sizeof(float));
    d->grad_sum = etm_malloc(m->n_params * sizeof(float));
    d->rec_len = 1;
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) d->rec_len += E + 1;
    d->rec = etm_calloc((size_t)d->rec_len, sizeof(double));
    d->rec_all = etm_calloc((size_t)P * d->rec_len, sizeof(double));
    d->rr = etm_calloc((size_t)P * E + 1, sizeof(double));
}

/* The gradient summed over the ranks in rank order (comm fold_sum), through host memory. */
static int dp_reduce(dp_state *d, etm_backend *be, etm_model *m, etm_error *err) {
    size_t P = m->n_params;
    be->download(be, d->grad_host, m->grads_memory, P * sizeof(float));
    if (d->comm->fold_sum(d->comm, d->grad_host, 1, P, d->grad_sum, err) != 0) return -1;
    be->upload(be, m->grads_memory, d->grad_sum, P * sizeof(float));
    return 0;
}

/* Every rank's router records (the last TRAIN forward's, per MoE layer) gathered and handed to
 * the routers in rank order, so that step_end updates the same router state on every rank. */
static int dp_records(dp_state *d, etm_model *m, etm_error *err) {
    int E = m->hp.n_routed, P = d->comm->size;
    double *p = d->rec;
    *p++ = 0.0; /* keeps the record non-empty for a dense model */
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        const double *rr;
        int n = etm_router_step_records(etm_moe_router(m->moe[l]), &rr);
        for (int e = 0; e < E; e++) *p++ = n > 0 ? rr[(size_t)(n - 1) * E + e] : 0.0;
        *p++ = n > 0;
    }
    if (d->comm->allgather(d->comm, d->rec, (size_t)d->rec_len * sizeof(double), d->rec_all, err) != 0)
        return -1;
    int off = 1;
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        int nr = 0;
        for (int k = 0; k < P; k++) {
            const double *q = d->rec_all + (size_t)k * d->rec_len + off;
            if (q[E] != 0.0) memcpy(d->rr + (size_t)nr++ * E, q, (size_t)E * sizeof(double));
        }
        etm_router_set_step_records(etm_moe_router_mut(m->moe[l]), d->rr, nr);
        off += E + 1;
    }
    return 0;
}

/* Newton-Schulz FLOPs and elements of the Muon matrices this rank updates (etm_optim_share). */
static void owned_muon(const etm_optim *optim, const etm_hparams *hp, const etm_model *m, int rank,
                       double *flops, double *elements) {
    *flops = *elements = 0.0;
    for (int i = 0; i < m->n_tensors; i++) {
        if (etm_optim_muon_owner(optim, i) != rank) continue;
        *flops += tensor_optim_flops(hp, &m->table[i]);
        double n = 1.0;
        for (int k = 0; k < m->table[i].ndim; k++) n *= (double)m->table[i].shape[k];
        *elements += n;
    }
}

/* This rank's figures (etm_bench_figure) gathered from every rank: min, max and sum. */
static int gather_figures(etm_comm *comm, etm_bench_result *r, etm_error *err) {
    double mine[ETM_BENCH_N_FIGURES] = {0};
    mine[ETM_BENCH_FIG_TOKENS_PER_S] = r->tokens_per_s;
    mine[ETM_BENCH_FIG_GFLOPS] = r->gflops;
    mine[ETM_BENCH_FIG_RATIO] = r->ratio;
    mine[ETM_BENCH_FIG_CEILING] = r->ceiling;
    mine[ETM_BENCH_FIG_FWDBWD_S] = r->fwd_s + r->bwd_s;
    mine[ETM_BENCH_FIG_REDUCE_S] = r->reduce_s;
    mine[ETM_BENCH_FIG_RECORDS_S] = r->records_s;
    mine[ETM_BENCH_FIG_OPT_COMPUTE_S] = r->opt_compute_s;
    mine[ETM_BENCH_FIG_EXCHANGE_S] = r->exchange_s;
    mine[ETM_BENCH_FIG_OPT_S] = r->opt_s;
    for (int k = 0; k < ETM_COMM_N_OPS; k++) mine[ETM_BENCH_FIG_COMM_S] += r->comm_s[k];
    mine[ETM_BENCH_FIG_STEP_S] = r->fwd_s + r->bwd_s + r->reduce_s + r->records_s + r->opt_s;
    mine[ETM_BENCH_FIG_OPTIM_FLOPS] = r->optim_flops_owned;
    mine[ETM_BENCH_FIG_MUON_OWNED] = r->muon_owned;
    int P = comm->size;
    double *all = etm_malloc((size_t)P * sizeof mine);
    if (comm->allgather(comm, mine, sizeof mine, all, err) != 0) {
        free(all);
        return -1;
    }
    for (int f = 0; f < ETM_BENCH_N_FIGURES; f++) {
        r->fig_min[f] = r->fig_max[f] = all[f];
        r->fig_sum[f] = 0.0;
        for (int k = 0; k < P; k++) {
            double v = all[(size_t)k * ETM_BENCH_N_FIGURES + f];
            r->fig_min[f] = ETM_MIN(r->fig_min[f], v);
            r->fig_max[f] = ETM_MAX(r->fig_max[f], v);
            r->fig_sum[f] += v;
        }
    }
    free(all);
    return 0;
}

int etm_bench_run(etm_backend *be, const etm_hparams *hp, const etm_bench_options *opt,
                  etm_bench_result *out, etm_error *err) {
    if (opt->steps < 1) return etm_fail(err, "bench: steps=%d must be >= 1", opt->steps);
    if (opt->warmup < 0) return etm_fail(err, "bench: warmup=%d must be >= 0", opt->warmup);
    if (opt->ceiling_reps < 1)
        return etm_fail(err, "bench: ceiling_reps=%d must be >= 1", opt->ceiling_reps);
    if (etm_hparams_validate(hp, err) != 0) return -1;
    /* bench times one micro-batch's forward and backward; the routing pass is not part of it */
    if (hp->ec_pool_scope == ETM_EC_POOL_STEP)
        return etm_fail(err, "bench: ec_pool_scope = step is not measured (its routing pass is not in the "
                             "bench loop); bench ec_pool_scope = microbatch");
    memset(out, 0, sizeof *out);
    snprintf(out->backend, sizeof out->backend, "%s", be->name);
    out->threads = openmp_threads();
    const int B = hp->batch_size, T = hp->seq_len, N = B * T;
    const int ranks = opt->comm ? opt->comm->size : 1, rank = opt->comm ? opt->comm->rank : 0;
    out->batch = B;
    out->seq_len = T;
    out->tokens_per_step = (double)N;
    out->steps = opt->steps;
    out->ranks = ranks;

    etm_profiler *pr = opt->profile ? etm_profiler_create(be) : NULL;
    etm_backend *use = pr ? etm_profiler_backend(pr) : be;
    int rc = -1;
    etm_optim *optim = NULL;
    dp_state dp;
    memset(&dp, 0, sizeof dp);
    int32_t *tokens = etm_malloc(sizeof(int32_t) * (size_t)N);
    int32_t *targets = etm_malloc(sizeof(int32_t) * (size_t)N);
    etm_model *m = etm_model_create(use, hp, B, err);
    if (!m) goto done;
    optim = etm_optim_create(use, hp, m->table, m->n_tensors, err);
    if (!optim) goto done;
    if (ranks > 1) {
        etm_optim_share(optim, rank, ranks); /* distributed Muon */
        dp_init(&dp, opt->comm, m);
    }
    etm_rng rng;
    etm_rng_seed(&rng, hp->seed + (uint64_t)rank); /* each rank its own tokens */
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)etm_rng_below(&rng, (uint64_t)hp->vocab_size);
    for (int i = 0; i < N; i++) targets[i] = (int32_t)etm_rng_below(&rng, (uint64_t)hp->vocab_size);

    out->ceiling_m = N;
    out->ceiling_n = hp->ffn_hidden;
    out->ceiling_k = hp->d_model;
    double best_fb = INFINITY, best_opt = INFINITY, best_step = INFINITY;
    double fwd = 0.0, bwd = 0.0, opt_s = 0.0, routed = 0.0, ratio_sum = 0.0;
    double reduce = 0.0, records = 0.0, opt_compute = 0.0, exchange = 0.0;
    double ceil_prev = 0.0, ceil_sum = 0.0;
    for (int step = 0; step < opt->warmup + opt->steps; step++) {
        int timed = step >= opt->warmup;
        if (step == opt->warmup) {
            out->load_before = etm_load_average();
            ceil_prev = ceiling_gflops(be, out->ceiling_m, out->ceiling_n, out->ceiling_k,
                                       opt->ceiling_reps);
            out->ceiling_before = out->ceiling_min = out->ceiling_max = ceil_sum = ceil_prev;
            if (pr) etm_profiler_reset(pr);
            if (dp.comm) etm_comm_timed_reset(dp.comm);
        }
        if (timed) out->timed_threshold_steps += routes_by_threshold(m);
        double loss;
        if (pr) etm_profiler_set_phase(pr, ETM_BENCH_FWDBWD);
        be->synchronize(be);
        double t0 = etm_now();
        etm_model_zero_grad(m);
        if (etm_model_forward(m, tokens, targets, B, T, ETM_MOE_TRAIN, &loss, err) != 0) goto done;
        be->synchronize(be);
        double t1 = etm_now();
        /* loss scale 1 / ranks: the summed gradient is the mean over the step's micro-batches */
        if (etm_model_backward(m, 1.0f / (float)ranks, err) != 0) goto done;
        be->synchronize(be);
        double t2 = etm_now(), t2r = t2, t2c = t2;
        if (dp.comm) { /* the data-parallel step's communication before the optimizer */
            if (dp_reduce(&dp, be, m, err) != 0) goto done;
            t2r = etm_now();
            if (dp_records(&dp, m, err) != 0) goto done;
            t2c = etm_now();
        }
        if (pr) etm_profiler_set_phase(pr, ETM_BENCH_OPTIM);
        if (etm_optim_step(optim, step, NULL, err) != 0) goto done;
        be->synchronize(be);
        double t3 = etm_now(), t3x = t3;
        if (dp.comm) {
            if (etm_optim_exchange(optim, dp.comm, err) != 0) goto done;
            be->synchronize(be);
            t3x = etm_now();
        }
        etm_model_step_end(m);
        be->synchronize(be);
        double t4 = etm_now();
        if (!timed) continue;
        double step_opt = (t3 - t2c) + (t4 - t3); /* compute and exchange: the optimizer step */
        fwd += t1 - t0;
        bwd += t2 - t1;
        opt_s += step_opt;
        reduce += t2r - t2;
        records += t2c - t2r;
        exchange += t3x - t3;
        opt_compute += step_opt - (t3x - t3);
        best_fb = ETM_MIN(best_fb, t2 - t0);
        best_opt = ETM_MIN(best_opt, step_opt);
        best_step = ETM_MIN(best_step, t4 - t0);
        double r = routed_per_token(m);
        routed += r;
        /* this step's ratio, against the ceilings measured just before and just after it */
        double ceil_next = ceiling_gflops(be, out->ceiling_m, out->ceiling_n, out->ceiling_k,
                                          opt->ceiling_reps);
        double step_gflops = etm_model_train_flops_per_token(m, T, r) * N / (t2 - t0) * 1e-9;
        double around = 0.5 * (ceil_prev + ceil_next);
        double step_ratio = around > 0.0 ? step_gflops / around : 0.0;
        ratio_sum += step_ratio;
        out->best_ratio = ETM_MAX(out->best_ratio, step_ratio);
        ceil_sum += ceil_next;
        out->ceiling_min = ETM_MIN(out->ceiling_min, ceil_next);
        out->ceiling_max = ETM_MAX(out->ceiling_max, ceil_next);
        ceil_prev = ceil_next;
    }
    out->ceiling_after = ceil_prev;
    out->load_after = etm_load_average();
    out->ceiling = ceil_sum / (opt->steps + 1);

    const int S = opt->steps;
    out->fwd_s = fwd / S;
    out->bwd_s = bwd / S;
    out->opt_s = opt_s / S;
    out->best_fwdbwd_s = best_fb;
    out->best_opt_s = best_opt;
    out->best_step_s = best_step;
    out->routed_per_token = routed / S;
    out->params = (double)etm_model_num_params(m);
    out->active_params = etm_model_active_matmul_params(m, out->routed_per_token);
    out->flops_per_token = etm_model_train_flops_per_token(m, T, out->routed_per_token);
    out->flops_per_step = out->flops_per_token * N;
    out->optim_flops = etm_bench_optim_flops(hp, m->table, m->n_tensors);

    double fb = out->fwd_s + out->bwd_s;
    out->tokens_per_s = N / fb;
    out->gflops = out->flops_per_step / fb * 1e-9;
    out->best_tokens_per_s = N / best_fb;
    out->best_gflops = out->flops_per_step / best_fb * 1e-9;
    out->step_tokens_per_s = N / (fb + out->opt_s);
    out->optim_gflops = out->opt_s > 0.0 ? out->optim_flops / out->opt_s * 1e-9 : 0.0;
    out->ratio = ratio_sum / S;
    if (pr) {
        out->profiled = 1;
        etm_profiler_fill(pr, ETM_BENCH_FWDBWD, fb, S, &out->profile[ETM_BENCH_FWDBWD]);
        etm_profiler_fill(pr, ETM_BENCH_OPTIM, out->opt_s, S, &out->profile[ETM_BENCH_OPTIM]);
    }
    if (dp.comm) {
        out->reduce_s = reduce / S;
        out->records_s = records / S;
        out->opt_compute_s = opt_compute / S;
        out->exchange_s = exchange / S;
        const etm_comm_timing *ct = etm_comm_timed_totals(dp.comm);
        for (int k = 0; k < ETM_COMM_N_OPS; k++) {
            out->comm_s[k] = ct->seconds[k] / S;
            out->comm_sent[k] = ct->sent[k] / S;
            out->comm_received[k] = ct->received[k] / S;
        }
        owned_muon(optim, hp, m, rank, &out->optim_flops_owned, &out->muon_owned);
        out->step_tokens_per_s = N / (fb + out->reduce_s + out->records_s + out->opt_s);
        if (gather_figures(opt->comm, out, err) != 0) goto done;
    }
    rc = 0;
done:
    dp_free(&dp);
    etm_optim_free(optim);
    etm_model_free(m);
    free(tokens);
    free(targets);
    etm_profiler_free(pr);
    return rc;
}

/* ---- printing -------------------------------------------------------------------------------- */

static void print_profile(FILE *f, const char *title, const etm_bench_profile *p) {
    fprintf(f, "  %s, per step, by backend operation:\n", title);
    int hidden = 0;
    for (int i = 0; i < p->n_ops; i++) {
        const etm_bench_op *op = &p->ops[i];
        double pct = p->step_s > 0.0 ? 100.0 * op->seconds / p->step_s : 0.0;
        int sub = op->name[0] == ' ';
        if (!sub && pct < 0.1) {
            hidden++;
            continue;
        }
        if (sub)
            fprintf(f, "    %-22s %8.3f s %5.1f%%            ", op->name, op->seconds, pct);
        else
            fprintf(f, "    %-22s %8.3f s %5.1f%% %6.0f calls", op->name, op->seconds, pct,
                    op->calls);
        if (op->gflop > 0.0 && op->seconds > 0.0)
            fprintf(f, "  %7.1f GFLOP/s", op->gflop / op->seconds);
        fputc('\n', f);
    }
    double other = p->step_s - p->ops_s;
    fprintf(f, "    %-22s %8.3f s %5.1f%%\n", "(host, outside ops)", other,
            p->step_s > 0.0 ? 100.0 * other / p->step_s : 0.0);
    if (hidden) fprintf(f, "    (%d more operations under 0.1%% each)\n", hidden);
}

/* The gathered per-rank figures, in print order: label, figure, scale and unit. */
static const struct {
    const char *label;
    etm_bench_figure fig;
    double scale;
    const char *unit;
} rank_rows[] = {
    {"forward + backward", ETM_BENCH_FIG_FWDBWD_S, 1.0, "s"},
    {"  tokens/s", ETM_BENCH_FIG_TOKENS_PER_S, 1.0, "tokens/s"},
    {"  GFLOP/s", ETM_BENCH_FIG_GFLOPS, 1.0, "GFLOP/s"},
    {"  of the ceiling", ETM_BENCH_FIG_RATIO, 100.0, "%"},
    {"  ceiling", ETM_BENCH_FIG_CEILING, 1.0, "GFLOP/s"},
    {"gradient reduce", ETM_BENCH_FIG_REDUCE_S, 1.0, "s"},
    {"router records", ETM_BENCH_FIG_RECORDS_S, 1.0, "s"},
    {"optimizer compute", ETM_BENCH_FIG_OPT_COMPUTE_S, 1.0, "s"},
    {"  Newton-Schulz owned", ETM_BENCH_FIG_OPTIM_FLOPS, 1e-9, "GFLOP"},
    {"Muon exchange", ETM_BENCH_FIG_EXCHANGE_S, 1.0, "s"},
    {"optimizer step", ETM_BENCH_FIG_OPT_S, 1.0, "s"},
    {"inside comm calls", ETM_BENCH_FIG_COMM_S, 1.0, "s"},
    {"whole step", ETM_BENCH_FIG_STEP_S, 1.0, "s"},
};

/* What a data-parallel run adds: every rank's figures (min / max over ranks) and this rank's
 * communication by kind. */
static void print_ranks(FILE *f, const etm_bench_result *r) {
    static const char *const kind[ETM_COMM_N_OPS] = {"router records and statuses",
                                                     "gradient reduce", "Muon exchange"};
    double global_tokens = r->tokens_per_step * r->ranks;
    fprintf(f, "  data parallel: %d ranks, each batch %d x %d = %.0f tokens: %.0f tokens per step\n",
            r->ranks, r->batch, r->seq_len, r->tokens_per_step, global_tokens);
    fprintf(f, "  per rank, mean per timed step, min / max over ranks:\n");
    for (size_t i = 0; i < ETM_ARRAY_LEN(rank_rows); i++) {
        int fig = rank_rows[i].fig;
        double sc = rank_rows[i].scale;
        fprintf(f, "    %-24s %10.3f / %10.3f %s\n", rank_rows[i].label, r->fig_min[fig] * sc,
                r->fig_max[fig] * sc, rank_rows[i].unit);
    }
    fprintf(f, "  total: forward + backward %.0f tokens/s (sum over ranks); whole step %.0f tokens/s "
               "(%.0f tokens / slowest rank's %.3f s)\n",
            r->fig_sum[ETM_BENCH_FIG_TOKENS_PER_S], global_tokens / r->fig_max[ETM_BENCH_FIG_STEP_S],
            global_tokens, r->fig_max[ETM_BENCH_FIG_STEP_S]);
    fprintf(f, "  optimizer step per rank (compute + Muon exchange): %.3f s slowest; Newton-Schulz "
               "%.1f GFLOP in all, %.1f to %.1f per rank\n",
            r->fig_max[ETM_BENCH_FIG_OPT_S], r->optim_flops * 1e-9,
            r->fig_min[ETM_BENCH_FIG_OPTIM_FLOPS] * 1e-9, r->fig_max[ETM_BENCH_FIG_OPTIM_FLOPS] * 1e-9);
    fprintf(f, "  this rank's communication per step (inside the comm calls; includes waiting for the "
               "other ranks):\n");
    for (int k = 0; k < ETM_COMM_N_OPS; k++)
        fprintf(f, "    %-9s %-28s %8.3f s, sent %.0f bytes, received %.0f bytes\n",
                etm_comm_op_name((etm_comm_op)k), kind[k], r->comm_s[k], r->comm_sent[k],
                r->comm_received[k]);
    fprintf(f, "  Muon elements: %.0f in all (sum over ranks), %.0f to %.0f per rank; this rank updates %.0f "
               "of %.0f parameters\n",
            r->fig_sum[ETM_BENCH_FIG_MUON_OWNED], r->fig_min[ETM_BENCH_FIG_MUON_OWNED],
            r->fig_max[ETM_BENCH_FIG_MUON_OWNED], r->muon_owned, r->params);
}

void etm_bench_print(FILE *f, const etm_bench_result *r) {
    if (r->ranks > 1) fprintf(f, "  rank 0 (every rank's figures follow):\n");
    fprintf(f, "  %s backend, %d thread%s, batch %d x %d = %.0f tokens, %d timed step%s\n",
            r->backend, r->threads, r->threads == 1 ? "" : "s", r->batch, r->seq_len,
            r->tokens_per_step, r->steps, r->steps == 1 ? "" : "s");
    fprintf(f, "  parameters %.1fM, active matmul parameters per token %.1fM", r->params * 1e-6,
            r->active_params * 1e-6);
    if (r->routed_per_token > 0.0)
        fprintf(f, " (%.3f routed experts per token; routed by threshold in %d of %d timed steps)",
                r->routed_per_token, r->timed_threshold_steps, r->steps);
    fprintf(f, "\n  FLOPs: %.1f GFLOP per step forward + backward (%.1f MFLOP per token)",
            r->flops_per_step * 1e-9, r->flops_per_token * 1e-6);
    if (r->optim_flops > 0.0)
        fprintf(f, ", optimizer %.1f GFLOP (Newton-Schulz)", r->optim_flops * 1e-9);
    fprintf(f, "\n  ceiling: %s %dx%dx%d, mean %.1f GFLOP/s of %d measurements between steps (%.1f to "
               "%.1f); load average %.2f, %.2f\n",
            strcmp(r->backend, "cpu") ? "gemm" : "cblas_sgemm", r->ceiling_m, r->ceiling_n,
            r->ceiling_k, r->ceiling, r->steps + 1, r->ceiling_min, r->ceiling_max, r->load_before,
            r->load_after);
    fprintf(f, "  forward + backward: mean %.3f s (forward %.3f s, backward %.3f s): %.0f tokens/s, "
               "%.1f GFLOP/s\n",
            r->fwd_s + r->bwd_s, r->fwd_s, r->bwd_s, r->tokens_per_s, r->gflops);
    fprintf(f, "                      best %.3f s: %.0f tokens/s, %.1f GFLOP/s\n", r->best_fwdbwd_s,
            r->best_tokens_per_s, r->best_gflops);
    fprintf(f, "  of the ceiling around each step: %.0f%% mean, %.0f%% best\n", 100.0 * r->ratio,
            100.0 * r->best_ratio);
    fprintf(f, "  optimizer step: mean %.3f s, best %.3f s", r->opt_s, r->best_opt_s);
    if (r->optim_flops > 0.0 && r->ranks <= 1)
        fprintf(f, ", %.1f GFLOP/s (Newton-Schulz FLOPs)", r->optim_gflops);
    if (r->ranks > 1)
        fprintf(f, " (compute %.3f s, Muon exchange %.3f s)", r->opt_compute_s, r->exchange_s);
    fprintf(f, "\n  whole step: mean %.3f s, best %.3f s: %.0f tokens/s\n",
            r->fwd_s + r->bwd_s + r->reduce_s + r->records_s + r->opt_s, r->best_step_s,
            r->step_tokens_per_s);
    if (r->ranks > 1) print_ranks(f, r);
    if (r->profiled) {
        print_profile(f, "forward + backward", &r->profile[ETM_BENCH_FWDBWD]);
        print_profile(f, "optimizer", &r->profile[ETM_BENCH_OPTIM]);
    }
}
