/* cuda_gates.cu: the router gate functions beside sigmoid and the row softmax (backend.h
 * gate_forward / gate_backward: relu, the row softmax with a zero-logit anchor, the softmax over
 * the rows of each column) and rows_dot, the per-row dot product of the shared experts' gate
 * gradient.
 *
 * Row operations: one warp per row; the column softmax: one block per column. Sums run in double
 * in a fixed butterfly / tree order, no atomics, so results repeat bit for bit; they differ from
 * the CPU's sequential sums only by rounding. */
#include <math.h>

#include "cuda_internal.h"

#define WARPS_PER_BLOCK 8 /* row-per-warp kernels: 256 threads, 8 rows per block */
#define COLUMN_THREADS 256

static unsigned row_blocks(int N) { return (unsigned)((N + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK); }

__global__ void k_gate_relu_forward(float *out, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
__global__ void k_gate_relu_backward(float *dx, const float *dout, const float *out, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (out[i] > 0.0f) dx[i] += dout[i];
}

/* Shares of [0, x_1..x_E] per row; the anchor's share into anchor[row] (when given). */
__global__ void k_gate_anchor_forward(float *out, float *anchor, const float *x, int N, int E) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * E;
    float m = 0.0f; /* the anchor's logit */
    for (int i = lane; i < E; i += 32) m = fmaxf(m, xr[i]);
    m = etm_warp_max(m);
    double s = 0.0;
    for (int i = lane; i < E; i += 32) s += expf(xr[i] - m);
    s = etm_warp_sum(s) + (double)expf(-m);
    float inv = (float)(1.0 / s);
    float *o = out + (size_t)row * E;
    for (int i = lane; i < E; i += 32) o[i] = expf(xr[i] - m) * inv;
    if (anchor && lane == 0) anchor[row] = expf(-m) * inv;
}
__global__ void k_gate_anchor_backward(float *dx, const float *dout, const float *danchor,
                                       const float *out, const float *anchor, int N, int E) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *g = dout + (size_t)row * E, *p = out + (size_t)row * E;
    double dot = 0.0;
    for (int i = lane; i < E; i += 32) dot += (double)g[i] * p[i];
    dot = etm_warp_sum(dot);
    if (danchor) dot += (double)danchor[row] * anchor[row];
    float fd = (float)dot;
    float *d = dx + (size_t)row * E;
    for (int i = lane; i < E; i += 32) d[i] += p[i] * (g[i] - fd);
}

/* One block per column e: max, sum of exponentials, then the shares. */
__global__ void k_gate_columns_forward(float *out, const float *x, int N, int E) {
    __shared__ float fshared[32];
    __shared__ double dshared[32];
    int e = blockIdx.x;
    float m = -INFINITY;
    for (int r = threadIdx.x; r < N; r += blockDim.x) m = fmaxf(m, x[(size_t)r * E + e]);
    m = etm_block_max(m, fshared, -INFINITY);
    double s = 0.0;
    for (int r = threadIdx.x; r < N; r += blockDim.x) s += expf(x[(size_t)r * E + e] - m);
    s = etm_block_sum(s, dshared);
    float inv = (float)(1.0 / s);
    for (int r = threadIdx.x; r < N; r += blockDim.x) {
        size_t i = (size_t)r * E + e;
        out[i] = expf(x[i] - m) * inv;
    }
}
__global__ void k_gate_columns_backward(float *dx, const float *dout, const float *out, int N, int E) {
    __shared__ double dshared[32];
    int e = blockIdx.x;
    double dot = 0.0;
    for (int r = threadIdx.x; r < N; r += blockDim.x) {
        size_t i = (size_t)r * E + e;
        dot += (double)dout[i] * out[i];
    }
    float fd = (float)etm_block_sum(dot, dshared);
    for (int r = threadIdx.x; r < N; r += blockDim.x) {
        size_t i = (size_t)r * E + e;
        dx[i] += out[i] * (dout[i] - fd);
    }
}

void etm_cuda_gate_forward(etm_backend *be, etm_gate_op op, float *out, float *anchor, const float *x,
                           int N, int E) {
    if (N <= 0 || E <= 0) return;
    cudaStream_t st = etm_cuda(be)->stream;
    size_t n = (size_t)N * E;
    switch (op) {
    case ETM_GATE_OP_RELU:
        k_gate_relu_forward<<<etm_cuda_blocks(n), ETM_CUDA_THREADS, 0, st>>>(out, x, n);
        break;
    case ETM_GATE_OP_SOFTMAX_ANCHOR:
        k_gate_anchor_forward<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, st>>>(out, anchor, x, N, E);
        break;
    case ETM_GATE_OP_SOFTMAX_COLUMNS:
        k_gate_columns_forward<<<E, COLUMN_THREADS, 0, st>>>(out, x, N, E);
        break;
    }
    ETM_CUDA_LAUNCHED();
}

void etm_cuda_gate_backward(etm_backend *be, etm_gate_op op, float *dx, const float *dout,
                            const float *danchor, const float *out, const float *anchor, int N, int E) {
    if (N <= 0 || E <= 0) return;
    cudaStream_t st = etm_cuda(be)->stream;
    size_t n = (size_t)N * E;
    switch (op) {
    case ETM_GATE_OP_RELU:
        k_gate_relu_backward<<<etm_cuda_blocks(n), ETM_CUDA_THREADS, 0, st>>>(dx, dout, out, n);
        break;
    case ETM_GATE_OP_SOFTMAX_ANCHOR:
        k_gate_anchor_backward<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, st>>>(dx, dout, danchor, out,
                                                                               anchor, N, E);
        break;
    case ETM_GATE_OP_SOFTMAX_COLUMNS:
        k_gate_columns_backward<<<E, COLUMN_THREADS, 0, st>>>(dx, dout, out, N, E);
        break;
    }
    ETM_CUDA_LAUNCHED();
}

__global__ void k_rows_dot(float *out, const float *a, const float *b, int N, int D) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *ar = a + (size_t)row * D, *br = b + (size_t)row * D;
    double s = 0.0;
    for (int i = lane; i < D; i += 32) s += (double)ar[i] * br[i];
    s = etm_warp_sum(s);
    if (lane == 0) out[row] = (float)s;
}
void etm_cuda_rows_dot(etm_backend *be, float *out, const float *a, const float *b, int N, int D) {
    if (N <= 0) return;
    k_rows_dot<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, etm_cuda(be)->stream>>>(out, a, b, N, D);
    ETM_CUDA_LAUNCHED();
}
