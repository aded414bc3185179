/* bench.c: training-step throughput of a configured model (bench.h): the timed training loop,
 * the GEMM ceiling around it, and the per-operation profiler (a copy of the backend's operation
 * table whose entries time the real ones). */
#include <config.h>

#include "bench.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/cpu_bench.h"
#include "model.h"
#include "optim.h"
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

/* ---- the profiler -------------------------------------------------------------------------- */
/* Every compute operation of the table, except the two matrix products (timed apart, with their
 * FLOPs). Memory management and synchronize pass through untimed. */
#define PROFILED_OPS(X)                                                                            \
    X(upload) X(download) X(copy) X(zero) X(fill) X(scale) X(axpy) X(sum_squares) X(column_sum)    \
    X(add_row_vector) X(add_scaled_rows) X(embedding_forward) X(embedding_backward)                \
    X(rmsnorm_forward) X(rmsnorm_backward) X(rope_forward) X(rope_backward) X(attention_forward)   \
    X(attention_backward) X(relu2_forward) X(relu2_backward) X(softcap) X(xent_forward)            \
    X(xent_backward) X(sigmoid_forward) X(sigmoid_backward) X(softmax_forward)                     \
    X(softmax_backward) X(logsumexp_rows) X(topk_rows) X(select_columns) X(kth_largest_columns)    \
    X(build_dispatch) X(gather_rows) X(scatter_add_rows) X(gather_pairs) X(scatter_add_pairs)      \
    X(combine_forward) X(combine_backward) X(adamw_update)
#define OP_ENUM(name) OP_##name,
enum { OP_gemm, OP_gemm_grouped, PROFILED_OPS(OP_ENUM) OP_COUNT };
#define OP_NAME(name) #name,
static const char *const op_names[OP_COUNT] = {"gemm", "gemm_grouped", PROFILED_OPS(OP_NAME)};
/* [gemm or grouped][2 trans_a + trans_b] */
static const char *const gemm_kind_names[2][4] = {
    {"  gemm nn (x W)", "  gemm nt (x W^T)", "  gemm tn (A^T B)", "  gemm tt"},
    {"  grouped nn", "  grouped nt", "  grouped tn", "  grouped tt"}};

typedef struct {
    double seconds[OP_COUNT];
    double calls[OP_COUNT];
    double kind_s[2][4], kind_flops[2][4]; /* [gemm, grouped][2 trans_a + trans_b] */
} phase_timers;

typedef struct {
    etm_backend table; /* first: a copy of the real table with the compute entries replaced */
    etm_backend *orig; /* the real backend */
    int phase;         /* etm_bench_phase the timings go to */
    phase_timers t[ETM_BENCH_PHASES];
} profiler;

/* An operation finds its profiler from the be pointer it is given (the table comes first). The
 * backend is synchronised after each call so that an asynchronous one is timed, not queued. */
#define PROF_BEGIN(op)                                                                             \
    profiler *pr = (profiler *)be;                                                                 \
    phase_timers *tm = &pr->t[pr->phase];                                                          \
    double t0_ = etm_now()
#define PROF_END(op)                                                                               \
    pr->orig->synchronize(pr->orig);                                                               \
    double dt_ = etm_now() - t0_;                                                                  \
    tm->seconds[OP_##op] += dt_;                                                                   \
    tm->calls[OP_##op] += 1.0
#define WRAP(op, PARAMS, ARGS)                                                                     \
    static void prof_##op PARAMS {                                                                 \
        PROF_BEGIN(op);                                                                            \
        pr->orig->op ARGS;                                                                         \
        PROF_END(op);                                                                              \
        (void)dt_;                                                                                 \
    }

static void prof_gemm(etm_backend *be, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc) {
    PROF_BEGIN(gemm);
    pr->orig->gemm(pr->orig, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    PROF_END(gemm);
    tm->kind_s[0][2 * !!ta + !!tb] += dt_;
    tm->kind_flops[0][2 * !!ta + !!tb] += 2.0 * M * N * K;
}

static void prof_gemm_grouped(etm_backend *be, int ta, int tb, int count, const etm_gemm_group *g,
                              float alpha, const float *A, int lda, const float *B, int ldb,
                              float beta, float *C, int ldc) {
    PROF_BEGIN(gemm_grouped);
    pr->orig->gemm_grouped(pr->orig, ta, tb, count, g, alpha, A, lda, B, ldb, beta, C, ldc);
    PROF_END(gemm_grouped);
    double f = 0.0;
    for (int i = 0; i < count; i++) f += 2.0 * g[i].M * g[i].N * g[i].K;
    tm->kind_s[1][2 * !!ta + !!tb] += dt_;
    tm->kind_flops[1][2 * !!ta + !!tb] += f;
}

static double prof_sum_squares(etm_backend *be, const float *x, size_t n) {
    PROF_BEGIN(sum_squares);
    double s = pr->orig->sum_squares(pr->orig, x, n);
    PROF_END(sum_squares);
    (void)dt_;
    return s;
}

WRAP(upload, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(download, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(copy, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(zero, (etm_backend *be, void *p, size_t n), (pr->orig, p, n))
WRAP(fill, (etm_backend *be, float *x, float v, size_t n), (pr->orig, x, v, n))
WRAP(scale, (etm_backend *be, float *x, float a, size_t n), (pr->orig, x, a, n))
WRAP(axpy, (etm_backend *be, float *y, float a, const float *x, size_t n), (pr->orig, y, a, x, n))
WRAP(column_sum, (etm_backend *be, float *o, const float *in, int N, int E), (pr->orig, o, in, N, E))
WRAP(add_row_vector, (etm_backend *be, float *y, const float *v, int N, int E),
     (pr->orig, y, v, N, E))
WRAP(add_scaled_rows, (etm_backend *be, float *y, const float *a, const float *x, int N, int E),
     (pr->orig, y, a, x, N, E))
WRAP(embedding_forward, (etm_backend *be, float *o, const float *w, const int32_t *t, int N, int D),
     (pr->orig, o, w, t, N, D))
WRAP(embedding_backward,
     (etm_backend *be, float *dw, const float *d, const int32_t *t, int N, int D, int V),
     (pr->orig, dw, d, t, N, D, V))
WRAP(rmsnorm_forward, (etm_backend *be, float *o, float *r, const float *x, int N, int C, float eps),
     (pr->orig, o, r, x, N, C, eps))
WRAP(rmsnorm_backward,
     (etm_backend *be, float *dx, const float *d, const float *o, const float *r, int N, int C),
     (pr->orig, dx, d, o, r, N, C))
WRAP(rope_forward,
     (etm_backend *be, float *x, const float *c, const float *s, int B, int T, int H, int hd, int p0),
     (pr->orig, x, c, s, B, T, H, hd, p0))
WRAP(rope_backward,
     (etm_backend *be, float *x, const float *c, const float *s, int B, int T, int H, int hd, int p0),
     (pr->orig, x, c, s, B, T, H, hd, p0))
WRAP(attention_forward,
     (etm_backend *be, float *o, float *l, const float *q, const float *k, const float *v, int B,
      int T, int S, int H, int Hkv, int hd),
     (pr->orig, o, l, q, k, v, B, T, S, H, Hkv, hd))
WRAP(attention_backward,
     (etm_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
      const float *k, const float *v, const float *o, const float *l, int B, int T, int S, int H,
      int Hkv, int hd),
     (pr->orig, dq, dk, dv, dout, q, k, v, o, l, B, T, S, H, Hkv, hd))
WRAP(relu2_forward, (etm_backend *be, float *o, const float *x, size_t n), (pr->orig, o, x, n))
WRAP(relu2_backward, (etm_backend *be, float *dx, const float *d, const float *x, size_t n),
     (pr->orig, dx, d, x, n))
WRAP(softcap, (etm_backend *be, float *o, const float *x, size_t n, float cap),
     (pr->orig, o, x, n, cap))
WRAP(xent_forward,
     (etm_backend *be, float *l, const float *lg, const int32_t *t, int N, int V, float cap),
     (pr->orig, l, lg, t, N, V, cap))
WRAP(xent_backward,
     (etm_backend *be, float *d, const float *lg, const int32_t *t, int N, int V, float cap,
      float dl),
     (pr->orig, d, lg, t, N, V, cap, dl))
WRAP(sigmoid_forward, (etm_backend *be, float *o, const float *x, size_t n), (pr->orig, o, x, n))
WRAP(sigmoid_backward, (etm_backend *be, float *dx, const float *d, const float *o, size_t n),
     (pr->orig, dx, d, o, n))
WRAP(softmax_forward, (etm_backend *be, float *o, const float *x, int N, int E),
     (pr->orig, o, x, N, E))
WRAP(softmax_backward,
     (etm_backend *be, float *dx, const float *d, const float *o, int N, int E),
     (pr->orig, dx, d, o, N, E))
WRAP(logsumexp_rows, (etm_backend *be, float *o, const float *x, int N, int E),
     (pr->orig, o, x, N, E))
WRAP(topk_rows, (etm_backend *be, uint8_t *z, const float *s, int N, int E, int k),
     (pr->orig, z, s, N, E, k))
WRAP(select_columns,
     (etm_backend *be, uint8_t *z, const float *sc, const uint8_t *el, const float *th, int N,
      int E, int pool, int lo, int hi),
     (pr->orig, z, sc, el, th, N, E, pool, lo, hi))
WRAP(kth_largest_columns,
     (etm_backend *be, float *o, const float *sc, int N, int E, int pool, int k),
     (pr->orig, o, sc, N, E, pool, k))
WRAP(build_dispatch, (etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E),
     (pr->orig, d, z, N, E))
WRAP(gather_rows, (etm_backend *be, float *d, const float *s, const int32_t *pt, int P, int D),
     (pr->orig, d, s, pt, P, D))
WRAP(scatter_add_rows, (etm_backend *be, float *d, const float *s, const etm_dispatch *di, int D),
     (pr->orig, d, s, di, D))
WRAP(gather_pairs, (etm_backend *be, float *o, const float *x, const etm_dispatch *d),
     (pr->orig, o, x, d))
WRAP(scatter_add_pairs, (etm_backend *be, float *dx, const float *dp, const etm_dispatch *d),
     (pr->orig, dx, dp, d))
WRAP(combine_forward,
     (etm_backend *be, float *y, const float *ye, const float *g, const etm_dispatch *d, int D),
     (pr->orig, y, ye, g, d, D))
WRAP(combine_backward,
     (etm_backend *be, float *dye, float *dg, const float *dy, const float *ye, const float *g,
      const etm_dispatch *d, int D),
     (pr->orig, dye, dg, dy, ye, g, d, D))
WRAP(adamw_update,
     (etm_backend *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
      float b2, float eps, float wd, float bc1, float bc2),
     (pr->orig, p, g, m, v, n, lr, b1, b2, eps, wd, bc1, bc2))

static profiler *profiler_wrap(etm_backend *orig) {
    profiler *pr = etm_calloc(1, sizeof *pr);
    pr->table = *orig; /* memory management, synchronize and ctx pass through */
    pr->orig = orig;
    pr->table.gemm = prof_gemm;
    pr->table.gemm_grouped = prof_gemm_grouped;
#define OP_SET(name) pr->table.name = prof_##name;
    PROFILED_OPS(OP_SET)
#undef OP_SET
    return pr;
}

static void profiler_reset(profiler *pr) { memset(pr->t, 0, sizeof pr->t); }

/* The phase's timers per step, into the result's table. */
static void profile_fill(etm_bench_profile *out, const phase_timers *t, double step_s, int steps) {
    memset(out, 0, sizeof *out);
    out->step_s = step_s;
    for (int i = 0; i < OP_COUNT; i++) {
        if (t->calls[i] == 0.0) continue;
        out->ops_s += t->seconds[i] / steps;
        if (out->n_ops < ETM_BENCH_MAX_OPS)
            out->ops[out->n_ops++] =
                (etm_bench_op){op_names[i], t->calls[i] / steps, t->seconds[i] / steps, 0.0};
        if (i != OP_gemm && i != OP_gemm_grouped) continue;
        int g = i == OP_gemm ? 0 : 1;
        double flops = 0.0;
        for (int k = 0; k < 4; k++) flops += t->kind_flops[g][k];
        out->ops[out->n_ops - 1].gflop = flops / steps * 1e-9;
        for (int k = 0; k < 4; k++)
            if (t->kind_flops[g][k] > 0.0 && out->n_ops < ETM_BENCH_MAX_OPS)
                out->ops[out->n_ops++] = (etm_bench_op){gemm_kind_names[g][k], 0.0,
                                                        t->kind_s[g][k] / steps,
                                                        t->kind_flops[g][k] / steps * 1e-9};
    }
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

    profiler *pr = opt->profile ? profiler_wrap(be) : NULL;
    etm_backend *use = pr ? &pr->table : be;
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
            if (pr) profiler_reset(pr);
        }
        if (timed) out->timed_threshold_steps += routes_by_threshold(m);
        double loss;
        if (pr) pr->phase = ETM_BENCH_FWDBWD;
        be->synchronize(be);
        double t0 = etm_now();
        etm_model_zero_grad(m);
        if (etm_model_forward(m, tokens, targets, B, T, ETM_MOE_TRAIN, &loss, err) != 0) goto done;
        be->synchronize(be);
        double t1 = etm_now();
        if (etm_model_backward(m, 1.0f, err) != 0) goto done;
        be->synchronize(be);
        double t2 = etm_now();
        if (pr) pr->phase = ETM_BENCH_OPTIM;
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
        profile_fill(&out->profile[ETM_BENCH_FWDBWD], &pr->t[ETM_BENCH_FWDBWD], fb, S);
        profile_fill(&out->profile[ETM_BENCH_OPTIM], &pr->t[ETM_BENCH_OPTIM], out->opt_s, S);
    }
    rc = 0;
done:
    etm_optim_free(optim);
    etm_model_free(m);
    free(tokens);
    free(targets);
    free(pr);
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
