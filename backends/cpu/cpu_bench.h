/* cpu_bench.h: GEMM throughput measurements: the machine's fp32 ceiling (cblas_sgemm with the
 * BLAS's own threading over all OpenMP threads), against which benchmarks report the fraction
 * they reach, and the same measurement through a backend's gemm. */
#ifndef ETM_CPU_BENCH_H
#define ETM_CPU_BENCH_H

#include "backend.h"

/* GFLOP/s (2 M N K per product) of C(M,N) = A(M,K) B(K,N), row-major, no transposes, as the best of
 * reps timed calls after one warm-up call; random inputs. Call from serial code. Returns 0 for
 * sizes or reps below 1. */
double etm_cpu_sgemm_gflops(int M, int N, int K, int reps);

/* The same through be->gemm (the CPU backend tiles the product over our threads). */
double etm_backend_gemm_gflops(etm_backend *be, int M, int N, int K, int reps);

#endif
