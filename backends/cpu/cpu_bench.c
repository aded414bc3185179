/* cpu_bench.c: GEMM throughput measurements (see cpu_bench.h). */
#include <config.h>

#include "cpu_bench.h"
#include "cpu_internal.h"
#include "rng.h"

#include <cblas.h>
#include <stdlib.h>

#ifdef HAVE_OPENBLAS
void openblas_set_num_threads(int n);
#endif

static float *random_matrix(etm_rng *rng, size_t n) {
    float *x = etm_malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = etm_rng_uniform(rng) - 0.5f;
    return x;
}

/* C(M,N) = A(M,K) B(K,N) by cblas (be NULL) or by be->gemm; A, B, C in be's memory. */
static void product(etm_backend *be, const float *A, const float *B, float *C, int M, int N,
                    int K) {
    if (be)
        be->gemm(be, ETM_NO_TRANS, ETM_NO_TRANS, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C,
                    N);
}

/* Best GFLOP/s of reps products after one warm-up. */
static double time_best(etm_backend *be, int M, int N, int K, int reps) {
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

double etm_cpu_sgemm_gflops(int M, int N, int K, int reps) {
#ifdef HAVE_OPENBLAS
    /* OpenBLAS remembers one thread after a call from a team of one; give it all of ours back.
     * (Its OpenMP build also sets our thread count to this same number: no change.) */
    openblas_set_num_threads(cpu_max_threads());
#endif
    return time_best(NULL, M, N, K, reps);
}

double etm_backend_gemm_gflops(etm_backend *be, int M, int N, int K, int reps) {
    return time_best(be, M, N, K, reps);
}
