/* cuda_embedding.cu: token embedding lookup and its deterministic backward.
 *
 * Backward without atomics: the positions 0..N-1 are stably sorted by token (CUB's radix sort is
 * stable and deterministic), so each token's positions form one run in ascending order. The
 * block that finds the start of a run owns that row of dwte and adds dout of the run's positions
 * into it one after another, in ascending position order: the same additions, in the same
 * order, as a sequential loop over positions on the CPU, hence the same bits. Positions whose
 * token is outside [0, V) are sorted under the key V and skipped, as the CPU backend skips them. */
#include <cub/device/device_radix_sort.cuh>

#include "cuda_internal.h"

__global__ void k_embedding_forward(float *out, const float *wte, const int32_t *tokens, int N,
                                    int D) {
    size_t total = (size_t)N * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / D, d = i % D;
        out[i] = wte[(size_t)tokens[n] * D + d];
    }
}
void etm_cuda_embedding_forward(etm_backend *be, float *out, const float *wte,
                                const int32_t *tokens, int N, int D) {
    size_t total = (size_t)N * D;
    if (total == 0) return;
    k_embedding_forward<<<etm_cuda_blocks(total), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(
        out, wte, tokens, N, D);
    ETM_CUDA_LAUNCHED();
}

/* keys[i] = the token at position i (V when it is not a token); pos[i] = i. */
__global__ void k_sort_input(uint32_t *keys, int32_t *pos, const int32_t *tokens, int n, int V) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int32_t t = tokens[i];
        keys[i] = t >= 0 && t < V ? (uint32_t)t : (uint32_t)V;
        pos[i] = i;
    }
}

/* One block per sorted position i; only the block at the start of a run of equal tokens works.
 * Its threads own columns d of that token's row. */
__global__ void k_embedding_backward_runs(float *dwte, const float *dout,
                                          const uint32_t *sorted_tok, const int32_t *sorted_pos,
                                          int N, int D, int V) {
    int i = blockIdx.x;
    uint32_t tok = sorted_tok[i];
    if (tok >= (uint32_t)V || (i > 0 && sorted_tok[i - 1] == tok)) return;
    float *row = dwte + (size_t)tok * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = row[d];
        for (int j = i; j < N && sorted_tok[j] == tok; j++)
            acc = __fadd_rn(acc, dout[(size_t)sorted_pos[j] * D + d]);
        row[d] = acc;
    }
}

void etm_cuda_embedding_backward(etm_backend *be, float *dwte, const float *dout,
                                 const int32_t *tokens, int N, int D, int V) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (N <= 0 || D <= 0 || V <= 0) return;
    /* Keys are in [0, V]: only the low end_bit bits can be set. */
    int end_bit = 1;
    while (end_bit < 32 && ((uint64_t)1 << end_bit) <= (uint64_t)V) end_bit++;
    size_t temp_bytes = 0;
    ETM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const uint32_t *)NULL,
                                                   (uint32_t *)NULL, (const int32_t *)NULL,
                                                   (int32_t *)NULL, N, 0, end_bit, c->stream));
    size_t ints = etm_cuda_align((size_t)N * sizeof(int32_t));
    char *s = (char *)etm_cuda_scratch(be, 4 * ints + etm_cuda_align(temp_bytes));
    uint32_t *keys_in = (uint32_t *)s;
    int32_t *pos_in = (int32_t *)(s + ints);
    uint32_t *sorted_tok = (uint32_t *)(s + 2 * ints);
    int32_t *sorted_pos = (int32_t *)(s + 3 * ints);
    void *temp = s + 4 * ints;
    k_sort_input<<<etm_cuda_blocks((size_t)N), ETM_CUDA_THREADS, 0, c->stream>>>(keys_in, pos_in,
                                                                                 tokens, N, V);
    ETM_CUDA_LAUNCHED();
    ETM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, sorted_tok, pos_in,
                                                   sorted_pos, N, 0, end_bit, c->stream));
    int threads = D < ETM_CUDA_THREADS ? ((D + 31) / 32) * 32 : ETM_CUDA_THREADS;
    k_embedding_backward_runs<<<N, threads, 0, c->stream>>>(dwte, dout, sorted_tok, sorted_pos,
                                                            N, D, V);
    ETM_CUDA_LAUNCHED();
}
