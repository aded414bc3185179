/* cpu_bench.c: the machine's fp32 GEMM ceiling (cpu_bench.h): cblas_sgemm with the BLAS's own
 * threading, timed by backend_bench.c's product timer. */
#include <config.h>

#include "cpu_bench.h"
#include "backend_bench.h"
#include "cpu_internal.h"

#include <cblas.h>

#ifdef HAVE_OPENBLAS
void openblas_set_num_threads(int n);
#endif

/* C(M,N) = A(M,K) B(K,N) by cblas on host memory (be is NULL). */
static void cblas_product(etm_backend *be, const float *A, const float *B, float *C, int M, int N,
                          int K) {
    (void)be;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
}

double etm_cpu_sgemm_gflops(int M, int N, int K, int reps) {
#ifdef HAVE_OPENBLAS
    /* OpenBLAS remembers one thread after a call from a team of one; give it all of ours back.
     * (Its OpenMP build also sets our thread count to this same number: no change.) */
    openblas_set_num_threads(cpu_max_threads());
#endif
    return etm_bench_product_gflops(NULL, cblas_product, M, N, K, reps);
}
