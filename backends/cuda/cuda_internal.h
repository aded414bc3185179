/* cuda_internal.h: what the files of the CUDA backend share: the private context (stream, cuBLAS
 * handle, scratch memory), error checks, launch helpers, deterministic warp/block reductions and
 * the declarations of every operation, defined by op family in cuda_*.cu.
 *
 * Error policy: the operations of backend.h return nothing, and a failed CUDA call leaves the
 * device in an unknown state, so a CUDA or cuBLAS error inside an operation prints the call, the
 * file and line, and CUDA's message, then aborts (like a failed allocation in common.c). Only
 * etm_cuda_backend_create reports "no device" through etm_error, since that is expected. */
#ifndef ETM_CUDA_INTERNAL_H
#define ETM_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "backend.h"
#include "cuda_backend.h"
}

/* Threads per block of the simple one-dimensional kernels. */
#define ETM_CUDA_THREADS 256
/* Blocks of the first pass of sum_squares: a constant, so the reduction order never depends on
 * the device. */
#define ETM_CUDA_SUM_BLOCKS 256

typedef struct {
    int device;              /* CUDA device ordinal */
    cudaStream_t stream;     /* every kernel, copy and cuBLAS call goes here, in order */
    cublasHandle_t cublas;   /* bound to stream; atomics not allowed */
    etm_cuda_gemm_math gemm_math; /* fp32 (default), tf32 or bf16 tensor-core GEMMs */
    int max_smem_optin;      /* largest dynamic shared memory per block the device allows */
    void *scratch;           /* device scratch of scratch_bytes, grown on demand, reused by ops */
    size_t scratch_bytes;
    double *sum_partials;    /* (ETM_CUDA_SUM_BLOCKS + 1) device: sum_squares partials, total */
    double *sum_host;        /* (1) pinned host copy of the sum_squares total */
} etm_cuda_ctx;

void etm_cuda_fail(const char *what, const char *msg, const char *file, int line);

#define ETM_CUDA_CHECK(call)                                                                     \
    do {                                                                                         \
        cudaError_t etm_e_ = (call);                                                             \
        if (etm_e_ != cudaSuccess) etm_cuda_fail(#call, cudaGetErrorString(etm_e_), __FILE__,    \
                                                 __LINE__);                                      \
    } while (0)
#define ETM_CUBLAS_CHECK(call)                                                                   \
    do {                                                                                         \
        cublasStatus_t etm_s_ = (call);                                                          \
        if (etm_s_ != CUBLAS_STATUS_SUCCESS) etm_cuda_fail(#call, cublasGetStatusString(etm_s_), \
                                                           __FILE__, __LINE__);                  \
    } while (0)
/* After every kernel launch: catches bad launch configurations at the call that made them. */
#define ETM_CUDA_LAUNCHED() ETM_CUDA_CHECK(cudaGetLastError())

static inline etm_cuda_ctx *etm_cuda(etm_backend *be) { return (etm_cuda_ctx *)be->ctx; }

/* Scratch memory of at least bytes (contents undefined), valid until the next call that asks for
 * scratch. Ops run in stream order, so one op's use never overlaps another's. */
void *etm_cuda_scratch(etm_backend *be, size_t bytes);
/* Rounds a byte count up so that scratch carved into pieces stays 256-byte aligned. */
static inline size_t etm_cuda_align(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* Blocks for a grid-stride loop over n elements (capped: the loop covers the rest). */
static inline unsigned etm_cuda_blocks(size_t n) {
    size_t b = (n + ETM_CUDA_THREADS - 1) / ETM_CUDA_THREADS;
    if (b < 1) b = 1;
    if (b > 65535u * 16u) b = 65535u * 16u;
    return (unsigned)b;
}

/* ---- deterministic reductions (fixed shapes, fixed order; no atomics) ----------------------- */
/* Butterfly sum over the 32 lanes: every lane ends with the same bits (float addition is
 * commutative, so each pairwise step is the same on both partners). */
template <typename T> __device__ __forceinline__ T etm_warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T etm_warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}
/* Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); shared holds 32
 * values. Every thread gets the result. Warps reduce, then warp 0 reduces the warp sums. */
template <typename T> __device__ T etm_block_sum(T v, T *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = etm_warp_sum(v);
    __syncthreads(); /* shared may still be read by a previous reduction */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = lane < nwarps ? shared[lane] : (T)0;
        w = etm_warp_sum(w);
        if (lane == 0) shared[0] = w;
    }
    __syncthreads();
    return shared[0];
}
template <typename T> __device__ T etm_block_max(T v, T *shared, T lowest) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = etm_warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T w = lane < nwarps ? shared[lane] : lowest;
        w = etm_warp_max(w);
        if (lane == 0) shared[0] = w;
    }
    __syncthreads();
    return shared[0];
}

/* Exclusive prefix sum of v over the block in thread order (blockDim.x a multiple of 32, at most
 * 32 * MAX_WARPS); *total gets the block's sum. Every thread of the block must call it. */
template <int MAX_WARPS> __device__ int etm_block_exclusive_sum(int v, int *total) {
    __shared__ int warp_sums[MAX_WARPS];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    int incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        int up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
    }
    __syncthreads(); /* warp_sums may still be read by a previous call */
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int before = 0, all = 0;
    for (int w = 0; w < nwarps; w++) {
        if (w < warp) before += warp_sums[w];
        all += warp_sums[w];
    }
    *total = all;
    return before + incl - v;
}

/* ---- the operations (backend.h documents each) ----------------------------------------------- */
/* cuda_gemm.cu */
void etm_cuda_gemm(etm_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void etm_cuda_gemm_grouped(etm_backend *be, int trans_a, int trans_b, int count,
                           const etm_gemm_group *groups, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc);
void etm_cuda_syrk_batched(etm_backend *be, int trans, int count, int n, int k, float alpha,
                           const float *A, int lda, size_t a_stride, float beta, float *C, int ldc,
                           size_t c_stride);

/* cuda_elementwise.cu */
void etm_cuda_fill(etm_backend *be, float *x, float value, size_t n);
void etm_cuda_scale(etm_backend *be, float *x, float a, size_t n);
void etm_cuda_axpy(etm_backend *be, float *y, float a, const float *x, size_t n);
void etm_cuda_add_row_vector(etm_backend *be, float *y, const float *v, int N, int E);
void etm_cuda_add_scaled_rows(etm_backend *be, float *y, const float *a, const float *x, int N,
                              int E);
void etm_cuda_rope_forward(etm_backend *be, float *x, const float *cos_t, const float *sin_t,
                           int B, int T, int H, int hd, int pos0);
void etm_cuda_rope_backward(etm_backend *be, float *dx, const float *cos_t, const float *sin_t,
                            int B, int T, int H, int hd, int pos0);
void etm_cuda_relu2_forward(etm_backend *be, float *out, const float *x, size_t n);
void etm_cuda_relu2_backward(etm_backend *be, float *dx, const float *dout, const float *x,
                             size_t n);
void etm_cuda_softcap(etm_backend *be, float *out, const float *x, size_t n, float cap);
void etm_cuda_sigmoid_forward(etm_backend *be, float *out, const float *x, size_t n);
void etm_cuda_sigmoid_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                               size_t n);

/* cuda_reduce.cu */
double etm_cuda_sum_squares(etm_backend *be, const float *x, size_t n);
void etm_cuda_column_sum(etm_backend *be, float *out, const float *in, int N, int E);
void etm_cuda_rmsnorm_forward(etm_backend *be, float *out, float *rstd, const float *x, int N,
                              int C, float eps);
void etm_cuda_rmsnorm_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                               const float *rstd, int N, int C);
void etm_cuda_xent_forward(etm_backend *be, float *losses, const float *logits,
                           const int32_t *targets, int N, int V, float cap);
void etm_cuda_xent_backward(etm_backend *be, float *dlogits, const float *logits,
                            const int32_t *targets, int N, int V, float cap, float dloss);
void etm_cuda_softmax_forward(etm_backend *be, float *out, const float *x, int N, int E);
void etm_cuda_softmax_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                               int N, int E);
void etm_cuda_logsumexp_rows(etm_backend *be, float *out, const float *x, int N, int E);
/* cuda_gates.cu */
void etm_cuda_gate_forward(etm_backend *be, etm_gate_op op, float *out, float *anchor, const float *x,
                           int N, int E);
void etm_cuda_gate_backward(etm_backend *be, etm_gate_op op, float *dx, const float *dout,
                            const float *danchor, const float *out, const float *anchor, int N, int E);
void etm_cuda_rows_dot(etm_backend *be, float *out, const float *a, const float *b, int N, int D);

/* cuda_embedding.cu */
void etm_cuda_embedding_forward(etm_backend *be, float *out, const float *wte,
                                const int32_t *tokens, int N, int D);
void etm_cuda_embedding_backward(etm_backend *be, float *dwte, const float *dout,
                                 const int32_t *tokens, int N, int D, int V);

/* cuda_attention.cu */
void etm_cuda_attention_forward(etm_backend *be, float *out, float *lse, const float *q,
                                const float *k, const float *v, int B, int T, int S, int H,
                                int Hkv, int hd);
void etm_cuda_attention_backward(etm_backend *be, float *dq, float *dk, float *dv,
                                 const float *dout, const float *q, const float *k,
                                 const float *v, const float *out, const float *lse, int B, int T,
                                 int S, int H, int Hkv, int hd);

/* cuda_routing.cu */
void etm_cuda_topk_rows(etm_backend *be, uint8_t *z, const float *score, int N, int E, int k);
void etm_cuda_select_columns(etm_backend *be, uint8_t *z, const float *score,
                             const uint8_t *eligible, const float *threshold, int N, int E,
                             int pool_rows, int lo, int hi);
void etm_cuda_kth_largest_columns(etm_backend *be, float *out, const float *score, int N, int E,
                                  int pool_rows, int k);

/* cuda_dispatch.cu */
void etm_cuda_dispatch_alloc(etm_backend *be, etm_dispatch *d, int N, int E);
void etm_cuda_dispatch_free(etm_backend *be, etm_dispatch *d);
void etm_cuda_build_dispatch(etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E);
void etm_cuda_gather_rows(etm_backend *be, float *dst, const float *src,
                          const int32_t *pair_token, int P, int D);
void etm_cuda_scatter_add_rows(etm_backend *be, float *dst, const float *src,
                               const etm_dispatch *d, int D);
void etm_cuda_gather_pairs(etm_backend *be, float *out, const float *x, const etm_dispatch *d);
void etm_cuda_scatter_add_pairs(etm_backend *be, float *dx, const float *dpair,
                                const etm_dispatch *d);
void etm_cuda_combine_forward(etm_backend *be, float *y, const float *ye, const float *gate,
                              const etm_dispatch *d, int D);
void etm_cuda_combine_backward(etm_backend *be, float *dye, float *dgate, const float *dy,
                               const float *ye, const float *gate, const etm_dispatch *d, int D);

/* cuda_optim.cu */
void etm_cuda_adamw_update(etm_backend *be, float *p, const float *g, float *m, float *v,
                           size_t n, float lr, float b1, float b2, float eps, float wd, float bc1,
                           float bc2);

#endif
