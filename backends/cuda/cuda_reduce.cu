/* cuda_reduce.cu: the operations that reduce along rows or over a whole tensor: sum of squares,
 * column sums, RMSNorm, softmax, log-sum-exp and the soft-capped cross-entropy.
 *
 * Every reduction has a fixed shape: a row belongs to one warp (or one block for vocabulary-wide
 * rows), each thread walks a fixed stride, and partial sums meet in a fixed butterfly/tree order.
 * No atomics, so results repeat bit for bit; they differ from the CPU's sequential sums only by
 * rounding. */
#include <math.h>

#include "cuda_internal.h"

#define WARPS_PER_BLOCK 8 /* row-per-warp kernels: 256 threads, 8 rows per block */

static unsigned row_blocks(int N) { return (unsigned)((N + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK); }

/* ---- sum of squares in double: ETM_CUDA_SUM_BLOCKS fixed partials, then one block ------------ */
__global__ void k_sum_squares_partial(double *partials, const float *x, size_t n) {
    __shared__ double shared[32];
    double acc = 0.0;
    size_t stride = (size_t)ETM_CUDA_SUM_BLOCKS * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride) {
        double v = x[i];
        acc += v * v;
    }
    acc = etm_block_sum(acc, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}
__global__ void k_sum_squares_final(double *partials) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < ETM_CUDA_SUM_BLOCKS; i += blockDim.x) acc += partials[i];
    acc = etm_block_sum(acc, shared);
    if (threadIdx.x == 0) partials[ETM_CUDA_SUM_BLOCKS] = acc;
}
double etm_cuda_sum_squares(etm_backend *be, const float *x, size_t n) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (n == 0) return 0.0;
    k_sum_squares_partial<<<ETM_CUDA_SUM_BLOCKS, ETM_CUDA_THREADS, 0, c->stream>>>(
        c->sum_partials, x, n);
    ETM_CUDA_LAUNCHED();
    k_sum_squares_final<<<1, ETM_CUDA_THREADS, 0, c->stream>>>(c->sum_partials);
    ETM_CUDA_LAUNCHED();
    ETM_CUDA_CHECK(cudaMemcpyAsync(c->sum_host, c->sum_partials + ETM_CUDA_SUM_BLOCKS,
                                   sizeof(double), cudaMemcpyDeviceToHost, c->stream));
    ETM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    return *c->sum_host;
}

/* ---- column sums: block (32 columns x 8 row lanes); lane y sums rows y, y+8, ... in double,
 * then the 8 partials are added in lane order ---------------------------------------------------- */
__global__ void k_column_sum(float *out, const float *in, int N, int E) {
    __shared__ double part[8][33];
    int e = blockIdx.x * 32 + threadIdx.x;
    double acc = 0.0;
    if (e < E)
        for (int r = threadIdx.y; r < N; r += 8) acc += in[(size_t)r * E + e];
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && e < E) {
        double s = 0.0;
        for (int y = 0; y < 8; y++) s += part[y][threadIdx.x];
        out[e] = (float)s;
    }
}
void etm_cuda_column_sum(etm_backend *be, float *out, const float *in, int N, int E) {
    if (E <= 0) return;
    k_column_sum<<<(E + 31) / 32, dim3(32, 8), 0, etm_cuda(be)->stream>>>(out, in, N, E);
    ETM_CUDA_LAUNCHED();
}

/* ---- RMSNorm: one warp per row -------------------------------------------------------------- */
__global__ void k_rmsnorm_forward(float *out, float *rstd, const float *x, int N, int C,
                                  float eps) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) ss += xr[i] * xr[i];
    ss = etm_warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    float *o = out + (size_t)row * C;
    for (int i = lane; i < C; i += 32) o[i] = xr[i] * r;
    if (lane == 0) rstd[row] = r;
}
void etm_cuda_rmsnorm_forward(etm_backend *be, float *out, float *rstd, const float *x, int N,
                              int C, float eps) {
    if (N <= 0) return;
    k_rmsnorm_forward<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, etm_cuda(be)->stream>>>(
        out, rstd, x, N, C, eps);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_rmsnorm_backward(float *dx, const float *dout, const float *out,
                                   const float *rstd, int N, int C) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *g = dout + (size_t)row * C, *o = out + (size_t)row * C;
    float dot = 0.0f;
    for (int i = lane; i < C; i += 32) dot += g[i] * o[i];
    float mean = etm_warp_sum(dot) / (float)C;
    float r = rstd[row];
    float *d = dx + (size_t)row * C;
    for (int i = lane; i < C; i += 32) d[i] += r * (g[i] - o[i] * mean);
}
void etm_cuda_rmsnorm_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                               const float *rstd, int N, int C) {
    if (N <= 0) return;
    k_rmsnorm_backward<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, etm_cuda(be)->stream>>>(
        dx, dout, out, rstd, N, C);
    ETM_CUDA_LAUNCHED();
}

/* ---- softmax and log-sum-exp over the E columns of a row: one warp per row --------------------- */
__global__ void k_softmax_forward(float *out, const float *x, int N, int E) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * E;
    float m = -INFINITY;
    for (int i = lane; i < E; i += 32) m = fmaxf(m, xr[i]);
    m = etm_warp_max(m);
    double s = 0.0; /* in double, then one reciprocal, like the CPU backend */
    for (int i = lane; i < E; i += 32) s += expf(xr[i] - m);
    s = etm_warp_sum(s);
    float inv = (float)(1.0 / s);
    float *o = out + (size_t)row * E;
    for (int i = lane; i < E; i += 32) o[i] = expf(xr[i] - m) * inv;
}
void etm_cuda_softmax_forward(etm_backend *be, float *out, const float *x, int N, int E) {
    if (N <= 0) return;
    k_softmax_forward<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, etm_cuda(be)->stream>>>(out, x,
                                                                                         N, E);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_softmax_backward(float *dx, const float *dout, const float *out, int N, int E) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *g = dout + (size_t)row * E, *o = out + (size_t)row * E;
    double dot = 0.0;
    for (int i = lane; i < E; i += 32) dot += (double)g[i] * o[i];
    float fd = (float)etm_warp_sum(dot);
    float *d = dx + (size_t)row * E;
    for (int i = lane; i < E; i += 32) d[i] += o[i] * (g[i] - fd);
}
void etm_cuda_softmax_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                               int N, int E) {
    if (N <= 0) return;
    k_softmax_backward<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, etm_cuda(be)->stream>>>(
        dx, dout, out, N, E);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_logsumexp_rows(float *out, const float *x, int N, int E) {
    int row = blockIdx.x * WARPS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *xr = x + (size_t)row * E;
    float m = -INFINITY;
    for (int i = lane; i < E; i += 32) m = fmaxf(m, xr[i]);
    m = etm_warp_max(m);
    double s = 0.0;
    if (m != -INFINITY)
        for (int i = lane; i < E; i += 32) s += expf(xr[i] - m);
    s = etm_warp_sum(s);
    if (lane == 0) out[row] = m == -INFINITY ? -INFINITY : m + (float)log(s);
}
void etm_cuda_logsumexp_rows(etm_backend *be, float *out, const float *x, int N, int E) {
    if (N <= 0) return;
    k_logsumexp_rows<<<row_blocks(N), 32 * WARPS_PER_BLOCK, 0, etm_cuda(be)->stream>>>(out, x,
                                                                                        N, E);
    ETM_CUDA_LAUNCHED();
}

/* ---- soft-capped cross-entropy: one block per row (rows are vocabulary-wide) ----------------- */
#define XENT_THREADS 256

/* z = cap * tanh(l / cap); cap <= 0 means no cap (z = l). */
__device__ __forceinline__ float capped(float l, float cap) {
    return cap > 0.0f ? cap * tanhf(l / cap) : l;
}

/* Row maximum and sum of exp(z - max) of the capped logits, for every thread of the block. */
__device__ void xent_row_stats(const float *l, int V, float cap, float *shared, float *m_out,
                               float *s_out) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, capped(l[j], cap));
    m = etm_block_max(m, shared, -INFINITY);
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(capped(l[j], cap) - m);
    s = etm_block_sum(s, shared);
    *m_out = m;
    *s_out = s;
}

__global__ void k_xent_forward(float *losses, const float *logits, const int32_t *targets, int V,
                               float cap) {
    __shared__ float shared[32];
    int row = blockIdx.x, t = targets[row];
    if (t < 0 || t >= V) { /* the whole block leaves together */
        /* ignored; a target past the vocabulary is a bug upstream: NaN makes it loud */
        if (threadIdx.x == 0) losses[row] = t < 0 ? 0.0f : NAN;
        return;
    }
    const float *l = logits + (size_t)row * V;
    float m, s;
    xent_row_stats(l, V, cap, shared, &m, &s);
    if (threadIdx.x == 0) losses[row] = m + logf(s) - capped(l[t], cap);
}
void etm_cuda_xent_forward(etm_backend *be, float *losses, const float *logits,
                           const int32_t *targets, int N, int V, float cap) {
    if (N <= 0) return;
    k_xent_forward<<<N, XENT_THREADS, 0, etm_cuda(be)->stream>>>(losses, logits, targets, V, cap);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_xent_backward(float *dlogits, const float *logits, const int32_t *targets,
                                int V, float cap, float dloss) {
    __shared__ float shared[32];
    int row = blockIdx.x, t = targets[row];
    float *d = dlogits + (size_t)row * V;
    if (t < 0 || t >= V) { /* ignored rows get 0; a target past the vocabulary, NaN */
        for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = t < 0 ? 0.0f : NAN;
        return;
    }
    const float *l = logits + (size_t)row * V;
    float m, s;
    xent_row_stats(l, V, cap, shared, &m, &s);
    float lse = m + logf(s);
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float z = capped(l[j], cap);
        float g = expf(z - lse) - (j == t ? 1.0f : 0.0f);
        if (cap > 0.0f) {
            float th = z / cap; /* tanh(l / cap); d z / d l = 1 - tanh^2 */
            g *= 1.0f - th * th;
        }
        d[j] = dloss * g;
    }
}
void etm_cuda_xent_backward(etm_backend *be, float *dlogits, const float *logits,
                            const int32_t *targets, int N, int V, float cap, float dloss) {
    if (N <= 0) return;
    k_xent_backward<<<N, XENT_THREADS, 0, etm_cuda(be)->stream>>>(dlogits, logits, targets, V,
                                                                   cap, dloss);
    ETM_CUDA_LAUNCHED();
}
