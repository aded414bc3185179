/* cpu_bench.h: throughput measurements: the machine's fp32 GEMM ceiling (cblas_sgemm with the
 * BLAS's own threading over all OpenMP threads), against which benchmarks report the fraction
 * they reach, and timings of a backend's gemm, grouped gemm, attention and cross-entropy (used by
 * `etmoe backends --bench`). */
#ifndef ETM_CPU_BENCH_H
#define ETM_CPU_BENCH_H

#include "backend.h"

/* GFLOP/s (2 M N K per product) of C(M,N) = A(M,K) B(K,N), row-major, no transposes, as the best of
 * reps timed calls after one warm-up call; random inputs. Call from serial code. Returns 0 for
 * sizes or reps below 1. */
double etm_cpu_sgemm_gflops(int M, int N, int K, int reps);

/* The same through be->gemm (the CPU backend tiles the product over our threads). */
double etm_backend_gemm_gflops(etm_backend *be, int M, int N, int K, int reps);

/* GFLOP/s of be->gemm_grouped over count experts: rows[g] x N x K each, trans_b (an expert's up
 * projection); best of reps after a warm-up. */
double etm_backend_grouped_gflops(etm_backend *be, int count, const int *rows, int N, int K,
                                  int reps);

/* Best milliseconds of be->attention_forward (returned) and attention_backward (*bwd_ms) on
 * random q, k, v of the given shape (see backend.h). */
double etm_backend_attention_ms(etm_backend *be, int B, int T, int S, int H, int Hkv, int hd,
                                int reps, double *bwd_ms);

/* Best milliseconds of be->xent_forward (returned) and xent_backward (*bwd_ms) on N random rows
 * of V logits, cap 15. */
double etm_backend_xent_ms(etm_backend *be, int N, int V, int reps, double *bwd_ms);

#endif
