/* cuda_routing.cu: routing decisions: top-k per row (token choice), column selection within pools
 * (expert choice, expert threshold, TC capacity) and the k-th largest score per pool column
 * (the cut-off that ET thresholds follow).
 *
 * Decisions must equal the CPU's exactly, ties going to the lower index. Both selections are
 * defined by rank: an entry is in the top t when fewer than t entries beat it, where a beats b
 * when score_a > score_b, or the scores are equal and a has the lower index.
 *  - topk_rows: rows are short (E experts), so one thread per (row, expert) counts its rank.
 *  - select_columns / kth_largest_columns: columns of a pool are long (up to the whole batch),
 *    so a block per (pool, expert) finds the t-th largest score by a 4-pass radix select on the
 *    scores' order-preserving 32-bit keys, then marks every candidate above it and, among those
 *    equal to it, the lowest rows first (a block-wide scan in row order).
 * The shared-memory histograms use integer atomics: counts do not depend on the order of the
 * additions, so every result is deterministic. */
#include <math.h>

#include "cuda_internal.h"

/* An unsigned key ordered like the float: larger float, larger key. -0 counts as +0 (they compare
 * equal), and every NaN gets key 0, below -infinity, so a NaN score is never preferred and the
 * order stays total: the same keys as the CPU backend's. */
__device__ __forceinline__ uint32_t order_key(float x) {
    if (x != x) return 0u;
    uint32_t u = __float_as_uint(x == 0.0f ? 0.0f : x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}

/* ---- top-k per row -------------------------------------------------------------------------- */
__global__ void k_topk_rows(uint8_t *z, const float *score, int N, int E, int k) {
    size_t total = (size_t)N * E;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int e = (int)(i % E);
        const float *row = score + (i - e);
        uint32_t key = order_key(row[e]);
        int rank = 0; /* entries that beat e: larger key, or equal key and lower index */
        for (int j = 0; j < E; j++) {
            uint32_t kj = order_key(row[j]);
            rank += kj > key || (kj == key && j < e);
        }
        z[i] = rank < k;
    }
}
void etm_cuda_topk_rows(etm_backend *be, uint8_t *z, const float *score, int N, int E, int k) {
    size_t total = (size_t)N * E;
    if (total == 0) return;
    k_topk_rows<<<etm_cuda_blocks(total), ETM_CUDA_THREADS, 0, etm_cuda(be)->stream>>>(z, score, N,
                                                                                       E, k);
    ETM_CUDA_LAUNCHED();
}

/* ---- selection within a pool column ---------------------------------------------------------- */
#define SELECT_THREADS 512

/* The column of one (pool, expert) block: rows [row0, row0 + rows) of column e. */
typedef struct {
    const float *score;      /* (N, E) */
    const uint8_t *eligible; /* (N, E) or NULL: every row is a candidate */
    int row0, rows, E, e;
} pool_column;

__device__ __forceinline__ bool is_candidate(const pool_column &col, int n) {
    return col.eligible == NULL || col.eligible[(size_t)(col.row0 + n) * col.E + col.e] != 0;
}
__device__ __forceinline__ float score_at(const pool_column &col, int n) {
    return col.score[(size_t)(col.row0 + n) * col.E + col.e];
}

/* The key of the take-th largest candidate (1 <= take <= candidates); *need gets how many of the
 * candidates equal to it belong to the top take. Every thread gets both. */
__device__ uint32_t radix_select(const pool_column &col, int take, int *need) {
    __shared__ unsigned hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ int s_remaining;
    uint32_t prefix = 0, mask = 0;
    int remaining = take;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (int n = threadIdx.x; n < col.rows; n += blockDim.x) {
            if (!is_candidate(col, n)) continue;
            uint32_t key = order_key(score_at(col, n));
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int above = 0; /* candidates in higher bins */
            for (int b = 255; b >= 0; b--) {
                if (above + (int)hist[b] >= remaining || b == 0) {
                    s_prefix = prefix | ((uint32_t)b << shift);
                    s_remaining = remaining - above;
                    break;
                }
                above += (int)hist[b];
            }
        }
        __syncthreads();
        prefix = s_prefix;
        remaining = s_remaining;
        mask |= 255u << shift;
        __syncthreads(); /* s_prefix is rewritten by the next pass */
    }
    *need = remaining;
    return prefix;
}

__global__ void __launch_bounds__(SELECT_THREADS)
k_select_columns(uint8_t *z, const float *score, const uint8_t *eligible, const float *threshold,
                 int E, int pool_rows, int lo, int hi) {
    __shared__ int shared[32];
    pool_column col = {score, eligible, (int)blockIdx.x * pool_rows, pool_rows, E,
                       (int)blockIdx.y};
    float thr = threshold ? threshold[col.e] : 0.0f;
    int cand = 0, above = 0;
    for (int n = threadIdx.x; n < pool_rows; n += blockDim.x) {
        if (!is_candidate(col, n)) continue;
        cand++;
        above += threshold != NULL && score_at(col, n) >= thr;
    }
    cand = etm_block_sum(cand, shared);
    above = etm_block_sum(above, shared);
    /* clamp(n_above, lo, hi) with hi the hard cap (it wins if lo > hi); never more than the
     * candidates */
    int take = above < lo ? lo : above;
    if (take > hi) take = hi;
    if (take > cand) take = cand;
    if (take < 0) take = 0;

    uint32_t tau = 0xffffffffu;
    int need = 0;
    if (take > 0) tau = radix_select(col, take, &need);
    int taken_equal = 0; /* candidates equal to tau already marked, in row order */
    for (int base = 0; base < pool_rows; base += blockDim.x) {
        int n = base + threadIdx.x;
        bool in = n < pool_rows && take > 0 && is_candidate(col, n);
        uint32_t key = in ? order_key(score_at(col, n)) : 0u;
        bool equal = in && key == tau;
        int count;
        int before = etm_block_exclusive_sum<SELECT_THREADS / 32>(equal ? 1 : 0, &count);
        bool selected = in && (key > tau || (equal && taken_equal + before < need));
        if (n < pool_rows) z[(size_t)(col.row0 + n) * E + col.e] = selected;
        taken_equal += count;
    }
}
void etm_cuda_select_columns(etm_backend *be, uint8_t *z, const float *score,
                             const uint8_t *eligible, const float *threshold, int N, int E,
                             int pool_rows, int lo, int hi) {
    if (N <= 0 || E <= 0 || pool_rows <= 0) return;
    if (N % pool_rows != 0) /* rows past the last whole pool are never selected */
        ETM_CUDA_CHECK(cudaMemsetAsync(z, 0, (size_t)N * E, etm_cuda(be)->stream));
    if (N / pool_rows == 0) return;
    dim3 grid(N / pool_rows, E);
    k_select_columns<<<grid, SELECT_THREADS, 0, etm_cuda(be)->stream>>>(z, score, eligible,
                                                                       threshold, E, pool_rows,
                                                                       lo, hi);
    ETM_CUDA_LAUNCHED();
}

__global__ void __launch_bounds__(SELECT_THREADS)
k_kth_largest_columns(float *out, const float *score, int E, int pool_rows, int k) {
    pool_column col = {score, NULL, (int)blockIdx.x * pool_rows, pool_rows, E, (int)blockIdx.y};
    int need;
    uint32_t tau = radix_select(col, k, &need);
    if (threadIdx.x == 0) out[(size_t)blockIdx.x * E + col.e] = key_value(tau);
}
void etm_cuda_kth_largest_columns(etm_backend *be, float *out, const float *score, int N, int E,
                                  int pool_rows, int k) {
    if (N <= 0 || E <= 0 || pool_rows <= 0 || N / pool_rows == 0) return;
    if (k < 1 || k > pool_rows) {
        /* No k-th largest: k below 1 admits nothing (+inf), k past the pool everything (-inf). */
        etm_cuda_fill(be, out, k < 1 ? INFINITY : -INFINITY, (size_t)(N / pool_rows) * E);
        return;
    }
    dim3 grid(N / pool_rows, E);
    k_kth_largest_columns<<<grid, SELECT_THREADS, 0, etm_cuda(be)->stream>>>(out, score, E,
                                                                            pool_rows, k);
    ETM_CUDA_LAUNCHED();
}
