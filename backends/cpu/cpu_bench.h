/* cpu_bench.h: the machine's fp32 GEMM ceiling (cblas_sgemm with the BLAS's own threading over all
 * OpenMP threads), against which benchmarks report the fraction they reach. Timings of any
 * backend's operations are in backends/backend_bench.h. */
#ifndef ETM_CPU_BENCH_H
#define ETM_CPU_BENCH_H

/* GFLOP/s (2 M N K per product) of C(M,N) = A(M,K) B(K,N), row-major, no transposes, as the best of
 * reps timed calls after one warm-up call; random inputs. Call from serial code. Returns 0 for
 * sizes or reps below 1. */
double etm_cpu_sgemm_gflops(int M, int N, int K, int reps);

#endif
