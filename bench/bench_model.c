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
    double tokens_per_s, gflops, fwd_s, bwd_s, routed_per_token;
} bench_result;

static int run(etm_backend *be, const etm_hparams *hp, int B, int steps, bench_result *out) {
    etm_error err = {{0}};
    etm_model *m = etm_model_create(be, hp, B, &err);
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
    double fwd = 0.0, bwd = 0.0, routed = 0.0;
    for (int step = -1; step < steps; step++) { /* step -1 is a warm-up */
        double loss, t0 = etm_now();
        etm_model_zero_grad(m);
        if (etm_model_forward(m, tok, tgt, B, T, ETM_MOE_TRAIN, &loss, &err) < 0 ||
            etm_model_backward(m, 1.0f, &err) < 0) {
            fprintf(stderr, "bench: %s\n", err.msg);
            etm_model_free(m);
            return -1;
        }
        (void)loss;
        /* split of the step: a second forward alone (same routing work) */
        double t1 = etm_now();
        etm_model_step_end(m);
        if (step >= 0) {
            double t2 = etm_now();
            etm_model_forward(m, tok, tgt, B, T, ETM_MOE_REPLAY, &loss, &err);
            double f = etm_now() - t2;
            fwd += f;
            bwd += (t1 - t0) - f;
            int n_moe = 0;
            double r = 0.0;
            for (int l = 0; l < hp->n_layer; l++)
                if (m->moe[l]) {
                    r += etm_moe_last_stats(m->moe[l])->mean_experts;
                    n_moe++;
                }
            routed += n_moe ? r / n_moe : 0.0;
        }
    }
    double step_s = (fwd + bwd) / steps;
    out->fwd_s = fwd / steps;
    out->bwd_s = bwd / steps;
    out->routed_per_token = routed / steps;
    out->tokens_per_s = N / step_s;
    out->gflops = N * etm_model_train_flops_per_token(m, T, out->routed_per_token) / step_s * 1e-9;
    printf("  parameters %.1fM, active matmul parameters per token %.1fM, routed experts per token %.3f\n",
           etm_model_num_params(m) / 1e6, etm_model_active_matmul_params(m, out->routed_per_token) / 1e6,
           out->routed_per_token);
    free(tok);
    free(tgt);
    etm_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    int B = 8, steps = 3;
    const char *which = "both";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) B = atoi(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) which = argv[++i];
        else {
            fprintf(stderr, "usage: bench_model [--batch B] [--steps S] [--model dense|et|both]\n");
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
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    /* the MLP up-projection's shape: tokens x d_model times d_model x 4 d_model */
    double ceiling = etm_cpu_sgemm_gflops(B * 512, 2048, 512, 5);
    printf("bench_model: %d threads, batch %d x 512 tokens, %d timed steps\n", threads, B, steps);
    printf("sgemm ceiling (%d x 512 x 2048): %.1f GFLOP/s\n", B * 512, ceiling);
    const char *names[] = {"dense", "et"};
    etm_router_kind kinds[] = {ETM_ROUTER_DENSE, ETM_ROUTER_ET};
    for (int k = 0; k < 2; k++) {
        if (strcmp(which, "both") != 0 && strcmp(which, names[k]) != 0) continue;
        etm_hparams hp = bench_hp(kinds[k]);
        printf("%s:\n", k == 0 ? "dense (d512, 8 layers, FFN 2048)"
                               : "et (d512, 8 layers, layer 0 dense, 16 routed + 1 shared of width 1024, k=1)");
        bench_result r;
        if (run(be, &hp, B, steps, &r) < 0) return 1;
        printf("  %.0f tokens/s, step %.2f s (forward %.2f s, backward %.2f s), %.1f GFLOP/s = %.0f%% of the "
               "sgemm ceiling\n",
               r.tokens_per_s, r.fwd_s + r.bwd_s, r.fwd_s, r.bwd_s, r.gflops, 100.0 * r.gflops / ceiling);
    }
    etm_backend_free(be);
    return 0;
}
