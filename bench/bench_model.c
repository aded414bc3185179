/* bench_model.c: `make bench`. Times training steps (forward + backward) of a dense and an
 * ET-MoE model of d=512, 8 layers, 8 heads (2 KV heads), sequences of 512, vocabulary 8192, and
 * reports tokens/s, achieved GFLOP/s and the ratio to the sgemm ceiling measured on the spot.
 *
 * FLOPs per token = 3 * (2 * active matmul parameters + causal attention 2*2*H*hd*(T+1)/2 per
 * layer): attention projections, dense MLP or router + shared + (measured mean routed experts per
 * token) routed experts, LM head; backward counted as twice the forward. The embedding lookup,
 * norms and elementwise work count nothing. The ceiling is cblas_sgemm on all threads
 * (etm_cpu_sgemm_gflops) on the MLP's shape. Not a test: no thresholds. */
#include <config.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/cpu_bench.h"
#include "model.h"
#include "rng.h"

/* ---- --profile: time spent in each backend operation ---------------------------------------
 * A copy of the backend's table whose entries time the real ones. The wrapper struct starts
 * with the table, so an operation can find its timers from the be pointer it is given. */
#define PROFILED_OPS(X)                                                                            \
    X(gemm) X(gemm_grouped) X(attention_forward) X(attention_backward) X(rmsnorm_forward)          \
    X(rmsnorm_backward) X(rope_forward) X(rope_backward) X(relu2_forward) X(relu2_backward)        \
    X(xent_forward) X(xent_backward) X(embedding_forward) X(embedding_backward) X(zero) X(copy)    \
    X(axpy) X(sigmoid_forward) X(sigmoid_backward) X(select_columns) X(kth_largest_columns)        \
    X(build_dispatch) X(gather_rows) X(scatter_add_rows) X(gather_pairs) X(scatter_add_pairs)      \
    X(combine_forward) X(combine_backward) X(upload) X(download)
#define OP_ENUM(name) OP_##name,
enum { PROFILED_OPS(OP_ENUM) OP_COUNT };
#define OP_NAME(name) #name,
static const char *const op_names[] = {PROFILED_OPS(OP_NAME)};

typedef struct {
    etm_backend table;     /* first: the wrapped operations */
    etm_backend *orig;     /* the real backend */
    double seconds[OP_COUNT];
    long calls[OP_COUNT];
    double gemm_flops[2];  /* gemm, gemm_grouped */
    double by_trans_s[2][4], by_trans_flops[2][4]; /* [gemm, grouped][2 trans_a + trans_b] */
} profiler;

#define PROF_BEGIN(op) profiler *pr = (profiler *)be; double t0_ = etm_now(); pr->calls[OP_##op]++
#define PROF_END(op) pr->seconds[OP_##op] += etm_now() - t0_
#define WRAP(op, PARAMS, ARGS)                                                                     \
    static void prof_##op PARAMS {                                                                 \
        PROF_BEGIN(op);                                                                            \
        pr->orig->op ARGS;                                                                         \
        PROF_END(op);                                                                              \
    }

static void prof_gemm(etm_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    PROF_BEGIN(gemm);
    pr->orig->gemm(pr->orig, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    PROF_END(gemm);
    pr->gemm_flops[0] += 2.0 * M * N * K;
    pr->by_trans_s[0][2 * ta + tb] += etm_now() - t0_;
    pr->by_trans_flops[0][2 * ta + tb] += 2.0 * M * N * K;
}
static void prof_gemm_grouped(etm_backend *be, int ta, int tb, int count, const etm_gemm_group *g, float alpha,
                              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    PROF_BEGIN(gemm_grouped);
    pr->orig->gemm_grouped(pr->orig, ta, tb, count, g, alpha, A, lda, B, ldb, beta, C, ldc);
    PROF_END(gemm_grouped);
    double f = 0.0;
    for (int i = 0; i < count; i++) f += 2.0 * g[i].M * g[i].N * g[i].K;
    pr->gemm_flops[1] += f;
    pr->by_trans_s[1][2 * ta + tb] += etm_now() - t0_;
    pr->by_trans_flops[1][2 * ta + tb] += f;
}
WRAP(attention_forward, (etm_backend *be, float *o, float *l, const float *q, const float *k, const float *v, int B,
                         int T, int S, int H, int Hkv, int hd),
     (pr->orig, o, l, q, k, v, B, T, S, H, Hkv, hd))
WRAP(attention_backward, (etm_backend *be, float *dq, float *dk, float *dv, const float *dout, const float *q,
                          const float *k, const float *v, const float *o, const float *l, int B, int T, int S,
                          int H, int Hkv, int hd),
     (pr->orig, dq, dk, dv, dout, q, k, v, o, l, B, T, S, H, Hkv, hd))
WRAP(rmsnorm_forward, (etm_backend *be, float *o, float *r, const float *x, int N, int C, float eps),
     (pr->orig, o, r, x, N, C, eps))
WRAP(rmsnorm_backward, (etm_backend *be, float *dx, const float *d, const float *o, const float *r, int N, int C),
     (pr->orig, dx, d, o, r, N, C))
WRAP(rope_forward, (etm_backend *be, float *x, const float *c, const float *s, int B, int T, int H, int hd, int p0),
     (pr->orig, x, c, s, B, T, H, hd, p0))
WRAP(rope_backward, (etm_backend *be, float *x, const float *c, const float *s, int B, int T, int H, int hd, int p0),
     (pr->orig, x, c, s, B, T, H, hd, p0))
WRAP(relu2_forward, (etm_backend *be, float *o, const float *x, size_t n), (pr->orig, o, x, n))
WRAP(relu2_backward, (etm_backend *be, float *dx, const float *d, const float *x, size_t n), (pr->orig, dx, d, x, n))
WRAP(xent_forward, (etm_backend *be, float *l, const float *lg, const int32_t *t, int N, int V, float cap),
     (pr->orig, l, lg, t, N, V, cap))
WRAP(xent_backward, (etm_backend *be, float *d, const float *lg, const int32_t *t, int N, int V, float cap, float dl),
     (pr->orig, d, lg, t, N, V, cap, dl))
WRAP(embedding_forward, (etm_backend *be, float *o, const float *w, const int32_t *t, int N, int D),
     (pr->orig, o, w, t, N, D))
WRAP(embedding_backward, (etm_backend *be, float *dw, const float *d, const int32_t *t, int N, int D, int V),
     (pr->orig, dw, d, t, N, D, V))
WRAP(zero, (etm_backend *be, void *p, size_t n), (pr->orig, p, n))
WRAP(copy, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(upload, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(download, (etm_backend *be, void *d, const void *s, size_t n), (pr->orig, d, s, n))
WRAP(axpy, (etm_backend *be, float *y, float a, const float *x, size_t n), (pr->orig, y, a, x, n))
WRAP(sigmoid_forward, (etm_backend *be, float *o, const float *x, size_t n), (pr->orig, o, x, n))
WRAP(sigmoid_backward, (etm_backend *be, float *dx, const float *d, const float *o, size_t n), (pr->orig, dx, d, o, n))
WRAP(select_columns, (etm_backend *be, uint8_t *z, const float *sc, const uint8_t *el, const float *th, int N, int E,
                      int pool, int lo, int hi),
     (pr->orig, z, sc, el, th, N, E, pool, lo, hi))
WRAP(kth_largest_columns, (etm_backend *be, float *o, const float *sc, int N, int E, int pool, int k),
     (pr->orig, o, sc, N, E, pool, k))
WRAP(build_dispatch, (etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E), (pr->orig, d, z, N, E))
WRAP(gather_rows, (etm_backend *be, float *d, const float *s, const int32_t *pt, int P, int D), (pr->orig, d, s, pt, P, D))
WRAP(scatter_add_rows, (etm_backend *be, float *d, const float *s, const etm_dispatch *di, int D), (pr->orig, d, s, di, D))
WRAP(gather_pairs, (etm_backend *be, float *o, const float *x, const etm_dispatch *d), (pr->orig, o, x, d))
WRAP(scatter_add_pairs, (etm_backend *be, float *dx, const float *dp, const etm_dispatch *d), (pr->orig, dx, dp, d))
WRAP(combine_forward, (etm_backend *be, float *y, const float *ye, const float *g, const etm_dispatch *d, int D),
     (pr->orig, y, ye, g, d, D))
WRAP(combine_backward, (etm_backend *be, float *dye, float *dg, const float *dy, const float *ye, const float *g,
                        const etm_dispatch *d, int D),
     (pr->orig, dye, dg, dy, ye, g, d, D))

static profiler *profiler_wrap(etm_backend *orig) {
    profiler *pr = etm_calloc(1, sizeof *pr);
    pr->table = *orig;
    pr->orig = orig;
#define OP_SET(name) pr->table.name = prof_##name;
    PROFILED_OPS(OP_SET)
    return pr;
}

static void profiler_reset(profiler *pr) {
    memset(pr->seconds, 0, sizeof pr->seconds);
    memset(pr->calls, 0, sizeof pr->calls);
    memset(pr->gemm_flops, 0, sizeof pr->gemm_flops);
    memset(pr->by_trans_s, 0, sizeof pr->by_trans_s);
    memset(pr->by_trans_flops, 0, sizeof pr->by_trans_flops);
}

static void profiler_print(const profiler *pr, double step_seconds, int steps) {
    double sum = 0.0;
    for (int i = 0; i < OP_COUNT; i++) sum += pr->seconds[i];
    printf("  per step, by backend operation (forward + backward):\n");
    for (int i = 0; i < OP_COUNT; i++) {
        if (pr->calls[i] == 0 || pr->seconds[i] / steps < 0.005) continue;
        printf("    %-20s %7.3f s %5.1f%% %6ld calls", op_names[i], pr->seconds[i] / steps,
               100.0 * pr->seconds[i] / (step_seconds * steps), pr->calls[i] / steps);
        if (i == OP_gemm || i == OP_gemm_grouped) {
            int g = i == OP_gemm ? 0 : 1;
            printf("  %.1f GFLOP/s\n", pr->gemm_flops[g] / pr->seconds[i] * 1e-9);
            static const char *const kinds[] = {"x W (nn)", "x W^T (nt)", "dW = A^T B (tn)", "tt"};
            for (int t = 0; t < 4; t++)
                if (pr->by_trans_s[g][t] > 0.0)
                    printf("      %-18s %7.3f s  %.1f GFLOP/s\n", kinds[t], pr->by_trans_s[g][t] / steps,
                           pr->by_trans_flops[g][t] / pr->by_trans_s[g][t] * 1e-9);
            continue;
        }
        printf("\n");
    }
    printf("    %-20s %7.3f s %5.1f%%\n", "(outside these ops)", step_seconds - sum / steps,
           100.0 * (step_seconds - sum / steps) / step_seconds);
}

static etm_hparams bench_hp(etm_router_kind router) {
    etm_hparams hp;
    memset(&hp, 0, sizeof hp);
    hp.vocab_size = 8192;
    hp.seq_len = 512;
    hp.n_layer = 8;
    hp.d_model = 512;
    hp.n_head = 8;
    hp.n_kv_head = 2;
    hp.ffn_hidden = 4 * 512;
    hp.rope_base = 10000.0f;
    hp.logit_cap = 15.0f;
    hp.norm_eps = 1e-6f;
    hp.router = router;
    hp.dense_layers = 1;
    hp.n_routed = 16;
    hp.n_shared = 1;
    hp.expert_hidden = 2 * 512;
    hp.top_k = 1;
    hp.tc_score = ETM_SCORE_SIGMOID;
    hp.tc_balance = ETM_BALANCE_NONE;
    hp.et_beta = 0.999f;
    hp.et_warmup_steps = 1; /* the untimed first step routes by EC and sets the thresholds */
    hp.seed = 42;
    return hp;
}

typedef struct {
    double tokens_per_s, gflops;   /* from the mean step */
    double best_tokens_per_s, best_gflops;
    double fwd_s, bwd_s;           /* mean per step */
    double routed_per_token;       /* mean over MoE layers and steps */
} bench_result;

/* Builds the model, runs one untimed step, then times steps training steps. */
static int run(etm_backend *be, profiler *prof, const etm_hparams *hp, int B, int steps, bench_result *out) {
    etm_error err = {{0}};
    etm_model *m = etm_model_create(prof ? &prof->table : be, hp, B, &err);
    if (!m) {
        fprintf(stderr, "bench: %s\n", err.msg);
        return -1;
    }
    int T = hp->seq_len, N = B * T;
    int32_t *tok = etm_malloc(sizeof(int32_t) * N), *tgt = etm_malloc(sizeof(int32_t) * N);
    etm_rng rng;
    etm_rng_seed(&rng, 7);
    for (int i = 0; i < N; i++) tok[i] = (int32_t)etm_rng_below(&rng, hp->vocab_size);
    for (int i = 0; i < N; i++) tgt[i] = (int32_t)etm_rng_below(&rng, hp->vocab_size);
    double fwd = 0.0, bwd = 0.0, routed = 0.0, best = 1e30;
    for (int step = -1; step < steps; step++) { /* step -1 warms up (and sets ET thresholds) */
        if (step == 0 && prof) profiler_reset(prof);
        double loss, t0 = etm_now();
        etm_model_zero_grad(m);
        int rc = etm_model_forward(m, tok, tgt, B, T, ETM_MOE_TRAIN, &loss, &err);
        double t1 = etm_now();
        if (rc == 0) rc = etm_model_backward(m, 1.0f, &err);
        double t2 = etm_now();
        if (rc < 0) {
            fprintf(stderr, "bench: %s\n", err.msg);
            etm_model_free(m);
            return -1;
        }
        etm_model_step_end(m);
        if (step < 0) continue;
        fwd += t1 - t0;
        bwd += t2 - t1;
        best = t2 - t0 < best ? t2 - t0 : best;
        int n_moe = 0;
        double r = 0.0;
        for (int l = 0; l < hp->n_layer; l++)
            if (m->moe[l]) {
                r += etm_moe_last_stats(m->moe[l])->mean_experts;
                n_moe++;
            }
        routed += n_moe ? r / n_moe : 0.0;
    }
    double step_s = (fwd + bwd) / steps;
    out->fwd_s = fwd / steps;
    out->bwd_s = bwd / steps;
    out->routed_per_token = routed / steps;
    double flops = N * etm_model_train_flops_per_token(m, T, out->routed_per_token);
    out->tokens_per_s = N / step_s;
    out->gflops = flops / step_s * 1e-9;
    out->best_tokens_per_s = N / best;
    out->best_gflops = flops / best * 1e-9;
    printf("  parameters %.1fM, active matmul parameters per token %.1fM, routed experts per token %.3f,\n"
           "  %.1f GFLOP per step\n",
           etm_model_num_params(m) / 1e6, etm_model_active_matmul_params(m, out->routed_per_token) / 1e6,
           out->routed_per_token, flops * 1e-9);
    if (prof) profiler_print(prof, step_s, steps);
    free(tok);
    free(tgt);
    etm_model_free(m);
    return 0;
}

static double load_average(void) {
    double l = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1.0;
        fclose(f);
    }
    return l;
}

int main(int argc, char **argv) {
    int B = 8, steps = 3, profile = 0;
    const char *which = "both";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) B = atoi(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) which = argv[++i];
        else if (strcmp(argv[i], "--profile") == 0) profile = 1;
        else {
            fprintf(stderr, "usage: bench_model [--batch B] [--steps S] [--model dense|et|both] [--profile]\n");
            return 2;
        }
    }
    if (B < 1 || steps < 1) {
        fprintf(stderr, "bench_model: --batch and --steps must be positive\n");
        return 2;
    }
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create("cpu", &err);
    if (!be) {
        fprintf(stderr, "bench_model: %s\n", err.msg);
        return 1;
    }
    profiler *prof = profile ? profiler_wrap(be) : NULL;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("bench_model: %d threads, batch %d x 512 tokens, %d timed steps, load average %.2f\n", threads, B, steps,
           load_average());
    const char *names[] = {"dense", "et"};
    etm_router_kind kinds[] = {ETM_ROUTER_DENSE, ETM_ROUTER_ET};
    for (int k = 0; k < 2; k++) {
        if (strcmp(which, "both") != 0 && strcmp(which, names[k]) != 0) continue;
        etm_hparams hp = bench_hp(kinds[k]);
        printf("%s:\n", k == 0 ? "dense (d512, 8 layers, FFN 2048)"
                               : "et (d512, 8 layers, layer 0 dense, 16 routed + 1 shared of width 1024, k=1)");
        /* the ceiling is taken just before and after, on the MLP up-projection's shape (tokens x
         * d_model times d_model x 4 d_model): the machine is shared and its load drifts */
        double before = etm_cpu_sgemm_gflops(B * 512, 2048, 512, 5);
        bench_result r;
        if (run(be, prof, &hp, B, steps, &r) < 0) return 1;
        double after = etm_cpu_sgemm_gflops(B * 512, 2048, 512, 5);
        double ceiling = 0.5 * (before + after);
        printf("  sgemm ceiling %.1f GFLOP/s (%.1f before, %.1f after), load average %.2f\n", ceiling, before, after,
               load_average());
        printf("  mean step %.2f s (forward %.2f s, backward %.2f s): %.0f tokens/s, %.1f GFLOP/s = %.0f%% of the "
               "ceiling\n",
               r.fwd_s + r.bwd_s, r.fwd_s, r.bwd_s, r.tokens_per_s, r.gflops, 100.0 * r.gflops / ceiling);
        printf("  best step: %.0f tokens/s, %.1f GFLOP/s = %.0f%% of the ceiling\n", r.best_tokens_per_s,
               r.best_gflops, 100.0 * r.best_gflops / ceiling);
    }
    free(prof);
    etm_backend_free(be);
    return 0;
}
