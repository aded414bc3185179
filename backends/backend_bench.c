/* backend_bench.c: throughput measurements of any backend's operations (backend_bench.h).
 * Inputs are random, timings the best of several runs (wall clock), the backend synchronised
 * after each. */
#include <config.h>

#include "backend_bench.h"
#include "rng.h"

#include <stdlib.h>

static float *random_matrix(etm_rng *rng, size_t n) {
    float *x = etm_malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = etm_rng_uniform(rng) - 0.5f;
    return x;
}

double etm_bench_product_gflops(etm_backend *be, etm_product_fn product, int M, int N, int K,
                                int reps) {
    if (M < 1 || N < 1 || K < 1 || reps < 1) return 0.0;
    etm_rng rng;
    etm_rng_seed(&rng, 12345);
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float *hA = random_matrix(&rng, na), *hB = random_matrix(&rng, nb);
    float *A = hA, *B = hB, *C;
    if (be) {
        A = be->alloc(be, na * sizeof *A);
        B = be->alloc(be, nb * sizeof *B);
        C = be->alloc(be, nc * sizeof *C);
        be->upload(be, A, hA, na * sizeof *A);
        be->upload(be, B, hB, nb * sizeof *B);
    } else {
        C = etm_calloc(nc, sizeof *C);
    }
    product(be, A, B, C, M, N, K);
    if (be) be->synchronize(be);
    double best = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = etm_now();
        product(be, A, B, C, M, N, K);
        if (be) be->synchronize(be);
        double dt = etm_now() - t0;
        double rate = dt > 0 ? 2.0 * M * N * K / dt / 1e9 : 0.0;
        if (rate > best) best = rate;
    }
    if (be) {
        be->free(be, A);
        be->free(be, B);
        be->free(be, C);
    } else {
        free(C);
    }
    free(hA);
    free(hB);
    return best;
}

/* C(M,N) = A(M,K) B(K,N) by the backend's gemm. */
static void backend_product(etm_backend *be, const float *A, const float *B, float *C, int M,
                            int N, int K) {
    be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
}

double etm_backend_gemm_gflops(etm_backend *be, int M, int N, int K, int reps) {
    return etm_bench_product_gflops(be, backend_product, M, N, K, reps);
}

/* Random backend tensor of n floats, uniform in [-scale, scale). */
static float *backend_random(etm_backend *be, etm_rng *rng, size_t n, float scale) {
    float *h = etm_malloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++) h[i] = scale * (2.0f * etm_rng_uniform(rng) - 1.0f);
    float *d = be->alloc(be, (n ? n : 1) * sizeof *d);
    be->upload(be, d, h, n * sizeof *d);
    free(h);
    return d;
}

double etm_backend_grouped_gflops(etm_backend *be, int count, const int *rows, int N, int K,
                                  int reps) {
    if (count < 1 || N < 1 || K < 1 || reps < 1) return 0.0;
    etm_rng rng;
    etm_rng_seed(&rng, 7);
    etm_gemm_group *g = etm_malloc((size_t)count * sizeof *g);
    size_t total = 0;
    for (int e = 0; e < count; e++) {
        g[e] = (etm_gemm_group){rows[e], N, K, total * K, (size_t)e * N * K, total * N};
        total += (size_t)(rows[e] > 0 ? rows[e] : 0);
    }
    float *A = backend_random(be, &rng, total * K, 1.0f);
    float *B = backend_random(be, &rng, (size_t)count * N * K, 1.0f);
    float *C = be->alloc(be, (total ? total : 1) * N * sizeof *C);
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = etm_now();
        be->gemm_grouped(be, ETM_NO_TRANS, ETM_TRANS, count, g, 1.0f, A, K, B, K, 0.0f, C, N);
        be->synchronize(be);
        double dt = etm_now() - t0;
        if (r > 0 && dt < best) best = dt; /* run 0 warms up */
    }
    be->free(be, A);
    be->free(be, B);
    be->free(be, C);
    free(g);
    return best > 0 ? 2.0 * (double)total * N * K / best / 1e9 : 0.0;
}

double etm_backend_attention_ms(etm_backend *be, int B, int T, int S, int H, int Hkv, int hd,
                                int reps, double *bwd_ms) {
    etm_rng rng;
    etm_rng_seed(&rng, 8);
    size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * S * Hkv * hd;
    float *q = backend_random(be, &rng, nq, 1.0f), *k = backend_random(be, &rng, nk, 1.0f);
    float *v = backend_random(be, &rng, nk, 1.0f), *dout = backend_random(be, &rng, nq, 1.0f);
    float *out = be->alloc(be, nq * sizeof *out), *lse = be->alloc(be, (size_t)B * H * T * 4);
    float *dq = be->alloc(be, nq * sizeof *dq), *dk = be->alloc(be, nk * sizeof *dk);
    float *dv = be->alloc(be, nk * sizeof *dv);
    double best_f = 1e30, best_b = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = etm_now();
        be->attention_forward(be, out, lse, q, k, v, B, T, S, H, Hkv, hd);
        be->synchronize(be);
        double t1 = etm_now();
        be->attention_backward(be, dq, dk, dv, dout, q, k, v, out, lse, B, T, S, H, Hkv, hd);
        be->synchronize(be);
        double t2 = etm_now();
        if (r > 0) {
            best_f = ETM_MIN(best_f, t1 - t0);
            best_b = ETM_MIN(best_b, t2 - t1);
        }
    }
    float *bufs[] = {q, k, v, dout, out, lse, dq, dk, dv};
    for (size_t i = 0; i < ETM_ARRAY_LEN(bufs); i++) be->free(be, bufs[i]);
    if (bwd_ms) *bwd_ms = best_b * 1e3;
    return best_f * 1e3;
}

double etm_backend_xent_ms(etm_backend *be, int N, int V, int reps, double *bwd_ms) {
    etm_rng rng;
    etm_rng_seed(&rng, 9);
    float *logits = backend_random(be, &rng, (size_t)N * V, 8.0f);
    float *dlogits = be->alloc(be, (size_t)N * V * sizeof *dlogits);
    float *losses = be->alloc(be, (size_t)N * sizeof *losses);
    int32_t *host_t = etm_malloc((size_t)N * sizeof *host_t);
    for (int n = 0; n < N; n++) host_t[n] = (int32_t)etm_rng_below(&rng, (uint64_t)V);
    int32_t *targets = be->alloc(be, (size_t)N * sizeof *targets);
    be->upload(be, targets, host_t, (size_t)N * sizeof *targets);
    double best_f = 1e30, best_b = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = etm_now();
        be->xent_forward(be, losses, logits, targets, N, V, 15.0f);
        be->synchronize(be);
        double t1 = etm_now();
        be->xent_backward(be, dlogits, logits, targets, N, V, 15.0f, 1.0f / (float)N);
        be->synchronize(be);
        double t2 = etm_now();
        if (r > 0) {
            best_f = ETM_MIN(best_f, t1 - t0);
            best_b = ETM_MIN(best_b, t2 - t1);
        }
    }
    be->free(be, logits);
    be->free(be, dlogits);
    be->free(be, losses);
    be->free(be, targets);
    free(host_t);
    if (bwd_ms) *bwd_ms = best_b * 1e3;
    return best_f * 1e3;
}
