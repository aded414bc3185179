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

double etm_bench_optim_flops(const etm_hparams *hp, const etm_param *table, int n_tensors) {
    if (hp->matrix_optimizer != ETM_OPT_MUON) return 0.0;
    double flops = 0.0;
    for (int i = 0; i < n_tensors; i++) {
        const etm_param *p = &table[i];
        if (p->group != ETM_PARAM_MATRIX || p->ndim < 2) continue;
        double count = p->ndim == 3 ? (double)p->shape[0] : 1.0;
        double rows = (double)p->shape[p->ndim - 2], cols = (double)p->shape[p->ndim - 1];
        double s = ETM_MIN(rows, cols), l = ETM_MAX(rows, cols);
        flops += count * hp->ns_steps * (4.0 * s * s * l + 2.0 * s * s * s);
    }
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

int etm_bench_run(etm_backend *be, const etm_hparams *hp, const etm_bench_options *opt,
                  etm_bench_result *out, etm_error *err) {
    if (opt->steps < 1) return etm_fail(err, "bench: steps=%d must be >= 1", opt->steps);
    if (opt->warmup < 0) return etm_fail(err, "bench: warmup=%d must be >= 0", opt->warmup);
    if (opt->ceiling_reps < 1)
        return etm_fail(err, "bench: ceiling_reps=%d must be >= 1", opt->ceiling_reps);
    if (etm_hparams_validate(hp, err) != 0) return -1;
    memset(out, 0, sizeof *out);
    snprintf(out->backend, sizeof out->backend, "%s", be->name);
    out->threads = openmp_threads();
    const int B = hp->batch_size, T = hp->seq_len, N = B * T;
    out->batch = B;
    out->seq_len = T;
    out->tokens_per_step = (double)N;
    out->steps = opt->steps;

    etm_profiler *pr = opt->profile ? etm_profiler_create(be) : NULL;
    etm_backend *use = pr ? etm_profiler_backend(pr) : be;
    int rc = -1;
    etm_optim *optim = NULL;
    int32_t *tokens = etm_malloc(sizeof(int32_t) * (size_t)N);
    int32_t *targets = etm_malloc(sizeof(int32_t) * (size_t)N);
    etm_model *m = etm_model_create(use, hp, B, err);
    if (!m) goto done;
    optim = etm_optim_create(use, hp, m->table, m->n_tensors, err);
    if (!optim) goto done;
    etm_rng rng;
    etm_rng_seed(&rng, hp->seed);
    for (int i = 0; i < N; i++) tokens[i] = (int32_t)etm_rng_below(&rng, (uint64_t)hp->vocab_size);
    for (int i = 0; i < N; i++) targets[i] = (int32_t)etm_rng_below(&rng, (uint64_t)hp->vocab_size);

    out->ceiling_m = N;
    out->ceiling_n = hp->ffn_hidden;
    out->ceiling_k = hp->d_model;
    double best_fb = INFINITY, best_opt = INFINITY, best_step = INFINITY;
    double fwd = 0.0, bwd = 0.0, opt_s = 0.0, routed = 0.0, ratio_sum = 0.0;
    double ceil_prev = 0.0, ceil_sum = 0.0;
    for (int step = 0; step < opt->warmup + opt->steps; step++) {
        int timed = step >= opt->warmup;
        if (step == opt->warmup) {
            out->load_before = etm_load_average();
            ceil_prev = ceiling_gflops(be, out->ceiling_m, out->ceiling_n, out->ceiling_k,
                                       opt->ceiling_reps);
            out->ceiling_before = out->ceiling_min = out->ceiling_max = ceil_sum = ceil_prev;
            if (pr) etm_profiler_reset(pr);
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
        if (etm_model_backward(m, 1.0f, err) != 0) goto done;
        be->synchronize(be);
        double t2 = etm_now();
        if (pr) etm_profiler_set_phase(pr, ETM_BENCH_OPTIM);
        if (etm_optim_step(optim, step, NULL, err) != 0) goto done;
        etm_model_step_end(m);
        be->synchronize(be);
        double t3 = etm_now();
        if (!timed) continue;
        fwd += t1 - t0;
        bwd += t2 - t1;
        opt_s += t3 - t2;
        best_fb = ETM_MIN(best_fb, t2 - t0);
        best_opt = ETM_MIN(best_opt, t3 - t2);
        best_step = ETM_MIN(best_step, t3 - t0);
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
    rc = 0;
done:
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

void etm_bench_print(FILE *f, const etm_bench_result *r) {
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
    if (r->optim_flops > 0.0) fprintf(f, ", %.1f GFLOP/s (Newton-Schulz FLOPs)", r->optim_gflops);
    fprintf(f, "\n  whole step: mean %.3f s, best %.3f s: %.0f tokens/s\n",
            r->fwd_s + r->bwd_s + r->opt_s, r->best_step_s, r->step_tokens_per_s);
    if (r->profiled) {
        print_profile(f, "forward + backward", &r->profile[ETM_BENCH_FWDBWD]);
        print_profile(f, "optimizer", &r->profile[ETM_BENCH_OPTIM]);
    }
}
