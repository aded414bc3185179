/* cuda_dispatch.cu: dropless dispatch of (token, expert) pairs and the gathers and scatters that
 * move rows between tokens and pairs.
 *
 * build_dispatch is a counting sort done as scans, so its output is fully determined (no atomic
 * placement): one block per expert scans its column of the mask in token order, giving each
 * token its rank within the expert (tokens ascend within an expert) and the expert's count; one
 * block scans the per-token pair counts into token_offsets and the expert counts into
 * expert_offsets; then one thread per token writes its pairs, in ascending expert order.
 * Every scatter is owned by its destination (a token row, or a single pair), so there are no
 * atomics and sums run in ascending expert order, the order the CPU uses. */
#include "cuda_internal.h"

#define SCAN_THREADS 1024

void etm_cuda_dispatch_alloc(etm_backend *be, etm_dispatch *d, int N, int E) {
    size_t pairs = (size_t)N * E;
    d->n_tokens = N;
    d->n_experts = E;
    d->n_pairs = 0;
    d->expert_offsets = (int32_t *)be->alloc(be, (size_t)(E + 1) * sizeof(int32_t));
    d->pair_token = (int32_t *)be->alloc(be, pairs * sizeof(int32_t));
    d->pair_expert = (int32_t *)be->alloc(be, pairs * sizeof(int32_t));
    d->token_offsets = (int32_t *)be->alloc(be, (size_t)(N + 1) * sizeof(int32_t));
    d->token_pairs = (int32_t *)be->alloc(be, pairs * sizeof(int32_t));
    d->host_expert_offsets = (int32_t *)etm_calloc((size_t)E + 1, sizeof(int32_t));
}

void etm_cuda_dispatch_free(etm_backend *be, etm_dispatch *d) {
    be->free(be, d->expert_offsets);
    be->free(be, d->pair_token);
    be->free(be, d->pair_expert);
    be->free(be, d->token_offsets);
    be->free(be, d->token_pairs);
    free(d->host_expert_offsets);
    d->expert_offsets = d->pair_token = d->pair_expert = NULL;
    d->token_offsets = d->token_pairs = d->host_expert_offsets = NULL;
    d->n_pairs = 0;
}

/* Block e: col_rank[n*E+e] = number of tokens before n routed to e (for routed n);
 * col_count[e] = tokens routed to e. */
__global__ void __launch_bounds__(SCAN_THREADS)
k_dispatch_columns(int32_t *col_rank, int32_t *col_count, const uint8_t *z, int N, int E) {
    int e = blockIdx.x, running = 0;
    for (int base = 0; base < N; base += blockDim.x) {
        int n = base + threadIdx.x;
        bool routed = n < N && z[(size_t)n * E + e] != 0;
        int total;
        int before = etm_block_exclusive_sum<SCAN_THREADS / 32>(routed ? 1 : 0, &total);
        if (routed) col_rank[(size_t)n * E + e] = running + before;
        running += total;
    }
    if (threadIdx.x == 0) col_count[e] = running;
}

/* One block: token_offsets from the per-token pair counts, expert_offsets from col_count. */
__global__ void __launch_bounds__(SCAN_THREADS)
k_dispatch_offsets(int32_t *token_offsets, int32_t *expert_offsets, const int32_t *col_count,
                   const uint8_t *z, int N, int E) {
    int running = 0;
    for (int base = 0; base < N; base += blockDim.x) {
        int n = base + threadIdx.x, count = 0;
        if (n < N)
            for (int e = 0; e < E; e++) count += z[(size_t)n * E + e] != 0;
        int total;
        int before = etm_block_exclusive_sum<SCAN_THREADS / 32>(count, &total);
        if (n < N) token_offsets[n] = running + before;
        running += total;
    }
    if (threadIdx.x == 0) {
        token_offsets[N] = running;
        int off = 0;
        for (int e = 0; e < E; e++) {
            expert_offsets[e] = off;
            off += col_count[e];
        }
        expert_offsets[E] = off;
    }
}

/* One thread per token: its pairs, ascending expert. */
__global__ void k_dispatch_fill(int32_t *pair_token, int32_t *pair_expert, int32_t *token_pairs,
                                const int32_t *token_offsets, const int32_t *expert_offsets,
                                const int32_t *col_rank, const uint8_t *z, int N, int E) {
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < N; t += gridDim.x * blockDim.x) {
        int j = token_offsets[t];
        for (int e = 0; e < E; e++) {
            if (!z[(size_t)t * E + e]) continue;
            int p = expert_offsets[e] + col_rank[(size_t)t * E + e];
            pair_token[p] = t;
            pair_expert[p] = e;
            token_pairs[j++] = p;
        }
    }
}

void etm_cuda_build_dispatch(etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E) {
    etm_cuda_ctx *c = etm_cuda(be);
    d->n_tokens = N;
    d->n_experts = E;
    size_t rank_bytes = etm_cuda_align((size_t)N * E * sizeof(int32_t));
    char *s = (char *)etm_cuda_scratch(be, rank_bytes + (size_t)(E > 0 ? E : 1) * sizeof(int32_t));
    int32_t *col_rank = (int32_t *)s, *col_count = (int32_t *)(s + rank_bytes);
    if (E > 0) {
        k_dispatch_columns<<<E, SCAN_THREADS, 0, c->stream>>>(col_rank, col_count, z, N, E);
        ETM_CUDA_LAUNCHED();
    }
    k_dispatch_offsets<<<1, SCAN_THREADS, 0, c->stream>>>(d->token_offsets, d->expert_offsets,
                                                         col_count, z, N, E);
    ETM_CUDA_LAUNCHED();
    if (N > 0 && E > 0) {
        k_dispatch_fill<<<etm_cuda_blocks((size_t)N), ETM_CUDA_THREADS, 0, c->stream>>>(
            d->pair_token, d->pair_expert, d->token_pairs, d->token_offsets, d->expert_offsets,
            col_rank, z, N, E);
        ETM_CUDA_LAUNCHED();
    }
    ETM_CUDA_CHECK(cudaMemcpyAsync(d->host_expert_offsets, d->expert_offsets,
                                   (size_t)(E + 1) * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                   c->stream));
    ETM_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    d->n_pairs = d->host_expert_offsets[E];
}

/* ---- row and pair movement -------------------------------------------------------------------- */
#define GRID_STRIDE(i, n)                                                                        \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);                     \
         i += (size_t)gridDim.x * blockDim.x)

__global__ void k_gather_rows(float *dst, const float *src, const int32_t *pair_token, size_t n,
                              int D) {
    GRID_STRIDE(i, n) {
        size_t p = i / D, col = i % D;
        dst[i] = src[(size_t)pair_token[p] * D + col];
    }
}
void etm_cuda_gather_rows(etm_backend *be, float *dst, const float *src,
                          const int32_t *pair_token, int P, int D) {
    size_t n = (size_t)P * D;
    if (n == 0) return;
    k_gather_rows<<<etm_cuda_blocks(n), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(
        dst, src, pair_token, n, D);
    ETM_CUDA_LAUNCHED();
}

/* Thread per (token, column): adds the token's pair rows in ascending expert order. */
__global__ void k_scatter_add_rows(float *dst, const float *src, const int32_t *token_offsets,
                                   const int32_t *token_pairs, size_t n, int D) {
    GRID_STRIDE(i, n) {
        size_t t = i / D, col = i % D;
        float acc = dst[i];
        for (int j = token_offsets[t]; j < token_offsets[t + 1]; j++)
            acc = __fadd_rn(acc, src[(size_t)token_pairs[j] * D + col]);
        dst[i] = acc;
    }
}
void etm_cuda_scatter_add_rows(etm_backend *be, float *dst, const float *src,
                               const etm_dispatch *d, int D) {
    size_t n = (size_t)d->n_tokens * D;
    if (n == 0 || d->n_pairs == 0) return;
    k_scatter_add_rows<<<etm_cuda_blocks(n), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(
        dst, src, d->token_offsets, d->token_pairs, n, D);
    ETM_CUDA_LAUNCHED();
}

__global__ void k_gather_pairs(float *out, const float *x, const int32_t *pair_token,
                               const int32_t *pair_expert, size_t P, int E) {
    GRID_STRIDE(p, P) out[p] = x[(size_t)pair_token[p] * E + pair_expert[p]];
}
void etm_cuda_gather_pairs(etm_backend *be, float *out, const float *x, const etm_dispatch *d) {
    size_t P = (size_t)d->n_pairs;
    if (P == 0) return;
    k_gather_pairs<<<etm_cuda_blocks(P), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(
        out, x, d->pair_token, d->pair_expert, P, d->n_experts);
    ETM_CUDA_LAUNCHED();
}

/* Pairs are distinct (token, expert) cells, so each thread owns the cell it adds to. */
__global__ void k_scatter_add_pairs(float *dx, const float *dpair, const int32_t *pair_token,
                                    const int32_t *pair_expert, size_t P, int E) {
    GRID_STRIDE(p, P) {
        float *cell = dx + (size_t)pair_token[p] * E + pair_expert[p];
        *cell = __fadd_rn(*cell, dpair[p]);
    }
}
void etm_cuda_scatter_add_pairs(etm_backend *be, float *dx, const float *dpair,
                                const etm_dispatch *d) {
    size_t P = (size_t)d->n_pairs;
    if (P == 0) return;
    k_scatter_add_pairs<<<etm_cuda_blocks(P), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(
        dx, dpair, d->pair_token, d->pair_expert, P, d->n_experts);
    ETM_CUDA_LAUNCHED();
}

/* Thread per (token, column): y += gate[p] * ye[p] over the token's pairs, ascending expert. */
__global__ void k_combine_forward(float *y, const float *ye, const float *gate,
                                  const int32_t *token_offsets, const int32_t *token_pairs,
                                  size_t n, int D) {
    GRID_STRIDE(i, n) {
        size_t t = i / D, col = i % D;
        float acc = y[i];
        for (int j = token_offsets[t]; j < token_offsets[t + 1]; j++) {
            int p = token_pairs[j];
            acc = __fadd_rn(acc, __fmul_rn(gate[p], ye[(size_t)p * D + col]));
        }
        y[i] = acc;
    }
}
void etm_cuda_combine_forward(etm_backend *be, float *y, const float *ye, const float *gate,
                              const etm_dispatch *d, int D) {
    size_t n = (size_t)d->n_tokens * D;
    if (n == 0 || d->n_pairs == 0) return;
    k_combine_forward<<<etm_cuda_blocks(n), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(
        y, ye, gate, d->token_offsets, d->token_pairs, n, D);
    ETM_CUDA_LAUNCHED();
}

/* One warp per pair: dye = gate * dy[token] and dgate = dot(dy[token], ye[p]) (warp sum, in
 * double like the CPU backend). */
#define COMBINE_WARPS 8
__global__ void k_combine_backward(float *dye, float *dgate, const float *dy, const float *ye,
                                   const float *gate, const int32_t *pair_token, int P, int D) {
    int p = blockIdx.x * COMBINE_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (p >= P) return;
    const float *g = dy + (size_t)pair_token[p] * D;
    const float *e = ye + (size_t)p * D;
    float *out = dye + (size_t)p * D;
    float gp = gate[p];
    double dot = 0.0;
    for (int col = lane; col < D; col += 32) {
        out[col] = __fmul_rn(gp, g[col]);
        dot += (double)g[col] * e[col];
    }
    dot = etm_warp_sum(dot);
    if (lane == 0) dgate[p] = (float)dot;
}
void etm_cuda_combine_backward(etm_backend *be, float *dye, float *dgate, const float *dy,
                               const float *ye, const float *gate, const etm_dispatch *d, int D) {
    int P = d->n_pairs;
    if (P == 0) return;
    k_combine_backward<<<(P + COMBINE_WARPS - 1) / COMBINE_WARPS, 32 * COMBINE_WARPS, 0,
                         etm_cuda(be)->stream>>>(dye, dgate, dy, ye, gate, d->pair_token, P, D);
    ETM_CUDA_LAUNCHED();
}
