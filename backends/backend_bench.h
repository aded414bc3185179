/* backend_bench.h: throughput measurements of any backend through its operation table: gemm,
 * grouped gemm, attention and cross-entropy (used by `etmoe backends --bench` and by bench.c for
 * backends other than the CPU's), and the product timer the CPU ceiling (cpu/cpu_bench.h) uses. */
#ifndef ETM_BACKEND_BENCH_H
#define ETM_BACKEND_BENCH_H

#include "backend.h"

/* C(M,N) = A(M,K) B(K,N), row-major, on some engine (a backend's gemm, or cblas directly). */
typedef void (*etm_product_fn)(etm_backend *be, const float *A, const float *B, float *C, int M,
                               int N, int K);

/* GFLOP/s (2 M N K per product) of product as the best of reps timed calls after one warm-up
 * call; random inputs in be's memory (be NULL: host memory, product must not use be). Call from
 * serial code. Returns 0 for sizes or reps below 1. */
double etm_bench_product_gflops(etm_backend *be, etm_product_fn product, int M, int N, int K,
                                int reps);

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
