/* cuda_attention.cu: causal grouped-query attention, fused ("flash") forward and backward in fp32.
 *
 * Forward: a block takes 32 queries of one (batch, head) and walks the key/value tiles of 32
 * keys they can see, staged in shared memory. Each warp owns 4 query rows; lane j scores key j
 * of the tile, and the row keeps a running max, sum and output (online softmax), so no T x S
 * matrix is ever stored. It saves the log-sum-exp of each row.
 *
 * Backward recomputes the probabilities from the saved log-sum-exp, p = exp(s - lse), with
 * D_i = dot(dout_i, out_i) precomputed, and is split in two kernels so that every gradient
 * element has exactly one owner (no atomics, fixed order):
 *   - dq: a block per 32 queries of a (batch, head) walks the key tiles (like the forward);
 *   - dk, dv: a block per 32 keys of a (batch, kv head) walks every query head of its group and
 *     every query tile that can see those keys.
 * Head dimensions up to 256 are supported (register tiles of 32, 64, 128 or 256 columns). */
#include <math.h>

#include "cuda_internal.h"

#define TILE 32         /* queries and keys per tile: one per lane */
#define ATT_WARPS 8     /* 256 threads */
#define ROWS_PER_WARP (TILE / ATT_WARPS)

/* Copies rows [r0, r0+TILE) of a (rows, heads, hd)-strided tensor into a shared tile with row
 * pitch `pitch`, zero-filling rows past `rows`. */
__device__ void load_tile(float *dst, int pitch, const float *src, int r0, int rows,
                          size_t row_stride, int hd) {
    for (int e = threadIdx.x; e < TILE * hd; e += blockDim.x) {
        int r = e / hd, d = e % hd;
        dst[r * pitch + d] = r0 + r < rows ? src[(size_t)(r0 + r) * row_stride + d] : 0.0f;
    }
}

__device__ __forceinline__ float dot_shared(const float *a, const float *b, int hd) {
    float s = 0.0f;
    for (int d = 0; d < hd; d++) s += a[d] * b[d];
    return s;
}

/* ---- forward -------------------------------------------------------------------------------- */
template <int DC>
__global__ void __launch_bounds__(TILE * ATT_WARPS)
k_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int T,
                    int S, int H, int Hkv, int hd, float scale) {
    extern __shared__ float smem[];
    int pitch = hd + 1;
    float *Qs = smem;                  /* (TILE, hd)    rows read by the whole warp at once */
    float *Ks = Qs + TILE * hd;        /* (TILE, hd+1)  lane j reads row j: padded pitch */
    float *Vs = Ks + TILE * pitch;     /* (TILE, hd+1) */
    int q0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
    int g = h / (H / Hkv), off = S - T;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    size_t q_stride = (size_t)H * hd, kv_stride = (size_t)Hkv * hd;
    const float *qb = q + ((size_t)b * T * H + h) * hd;
    const float *kb = k + ((size_t)b * S * Hkv + g) * hd;
    const float *vb = v + ((size_t)b * S * Hkv + g) * hd;

    load_tile(Qs, hd, qb, q0, T, q_stride, hd);
    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], o[ROWS_PER_WARP][DC];
    #pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
        #pragma unroll
        for (int c = 0; c < DC; c++) o[rr][c] = 0.0f;
    }
    int last_query = min(q0 + TILE - 1, T - 1);
    int n_tiles = (off + last_query) / TILE + 1;
    for (int kt = 0; kt < n_tiles; kt++) {
        int j0 = kt * TILE;
        __syncthreads();
        load_tile(Ks, pitch, kb, j0, S, kv_stride, hd);
        load_tile(Vs, pitch, vb, j0, S, kv_stride, hd);
        __syncthreads();
        #pragma unroll
        for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
            int r = warp + ATT_WARPS * rr, i = q0 + r;
            if (i >= T) continue; /* uniform over the warp */
            int j = j0 + lane;
            bool valid = j <= off + i;
            /* Nothing visible in this tile: skip it. Decided by __any_sync, which every lane sees
             * alike, not by the tile's maximum: with a NaN score etm_warp_max can leave lanes
             * with different maxima, and a test on it would split the warp before the full-mask
             * shuffles below (a hang instead of the NaN the CPU backend gives). */
            if (!__any_sync(0xffffffffu, valid)) continue;
            float s = valid ? dot_shared(Qs + r * hd, Ks + lane * pitch, hd) * scale : -INFINITY;
            float tile_max = etm_warp_max(s);
            float m_new = fmaxf(m[rr], tile_max);
            float p = valid ? expf(s - m_new) : 0.0f;
            float alpha = expf(m[rr] - m_new); /* 0 on the first visible tile */
            l[rr] = l[rr] * alpha + etm_warp_sum(p);
            #pragma unroll
            for (int c = 0; c < DC; c++) o[rr][c] *= alpha;
            for (int jj = 0; jj < TILE; jj++) {
                float pj = __shfl_sync(0xffffffffu, p, jj);
                #pragma unroll
                for (int c = 0; c < DC; c++) {
                    int d = lane + 32 * c;
                    if (d < hd) o[rr][c] += pj * Vs[jj * pitch + d];
                }
            }
            m[rr] = m_new;
        }
    }
    #pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        int i = q0 + warp + ATT_WARPS * rr;
        if (i >= T) continue;
        float *orow = out + ((size_t)(b * T + i) * H + h) * hd;
        float inv = 1.0f / l[rr];
        #pragma unroll
        for (int c = 0; c < DC; c++) {
            int d = lane + 32 * c;
            if (d < hd) orow[d] = o[rr][c] * inv;
        }
        if (lane == 0) lse[((size_t)b * H + h) * T + i] = m[rr] + logf(l[rr]);
    }
}

/* ---- backward: D = rowwise dot(dout, out), one warp per (b, i, h) row ----------------------- */
__global__ void k_attention_delta(float *delta, const float *dout, const float *out, int B, int T,
                                  int H, int hd) {
    int row = blockIdx.x * ATT_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= B * T * H) return;
    const float *a = dout + (size_t)row * hd, *o = out + (size_t)row * hd;
    float s = 0.0f;
    for (int d = lane; d < hd; d += 32) s += a[d] * o[d];
    s = etm_warp_sum(s);
    int h = row % H, i = (row / H) % T, b = row / (H * T);
    if (lane == 0) delta[((size_t)b * H + h) * T + i] = s;
}

/* ---- backward, dq: like the forward, a block per 32 queries ---------------------------------- */
template <int DC>
__global__ void __launch_bounds__(TILE * ATT_WARPS)
k_attention_backward_dq(float *dq, const float *dout, const float *q, const float *k,
                        const float *v, const float *lse, const float *delta, int T, int S, int H,
                        int Hkv, int hd, float scale) {
    extern __shared__ float smem[];
    int pitch = hd + 1;
    float *Qs = smem;               /* (TILE, hd) */
    float *dOs = Qs + TILE * hd;    /* (TILE, hd) */
    float *Ks = dOs + TILE * hd;    /* (TILE, hd+1) */
    float *Vs = Ks + TILE * pitch;  /* (TILE, hd+1) */
    int q0 = blockIdx.x * TILE, h = blockIdx.y, b = blockIdx.z;
    int g = h / (H / Hkv), off = S - T;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    size_t q_stride = (size_t)H * hd, kv_stride = (size_t)Hkv * hd;
    size_t q_base = ((size_t)b * T * H + h) * hd;
    const float *kb = k + ((size_t)b * S * Hkv + g) * hd;
    const float *vb = v + ((size_t)b * S * Hkv + g) * hd;

    load_tile(Qs, hd, q + q_base, q0, T, q_stride, hd);
    load_tile(dOs, hd, dout + q_base, q0, T, q_stride, hd);
    float row_lse[ROWS_PER_WARP], row_delta[ROWS_PER_WARP], acc[ROWS_PER_WARP][DC];
    #pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        int i = q0 + warp + ATT_WARPS * rr;
        row_lse[rr] = i < T ? lse[((size_t)b * H + h) * T + i] : 0.0f;
        row_delta[rr] = i < T ? delta[((size_t)b * H + h) * T + i] : 0.0f;
        #pragma unroll
        for (int c = 0; c < DC; c++) acc[rr][c] = 0.0f;
    }
    int last_query = min(q0 + TILE - 1, T - 1);
    int n_tiles = (off + last_query) / TILE + 1;
    for (int kt = 0; kt < n_tiles; kt++) {
        int j0 = kt * TILE;
        __syncthreads();
        load_tile(Ks, pitch, kb, j0, S, kv_stride, hd);
        load_tile(Vs, pitch, vb, j0, S, kv_stride, hd);
        __syncthreads();
        #pragma unroll
        for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
            int r = warp + ATT_WARPS * rr, i = q0 + r;
            if (i >= T) continue;
            int j = j0 + lane;
            bool valid = j <= off + i;
            if (!__any_sync(0xffffffffu, valid)) continue;
            float ds = 0.0f;
            if (valid) {
                float s = dot_shared(Qs + r * hd, Ks + lane * pitch, hd) * scale;
                float p = expf(s - row_lse[rr]);
                float dp = dot_shared(dOs + r * hd, Vs + lane * pitch, hd);
                ds = p * (dp - row_delta[rr]);
            }
            for (int jj = 0; jj < TILE; jj++) {
                float dsj = __shfl_sync(0xffffffffu, ds, jj);
                #pragma unroll
                for (int c = 0; c < DC; c++) {
                    int d = lane + 32 * c;
                    if (d < hd) acc[rr][c] += dsj * Ks[jj * pitch + d];
                }
            }
        }
    }
    #pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        int i = q0 + warp + ATT_WARPS * rr;
        if (i >= T) continue;
        float *row = dq + q_base + (size_t)i * q_stride;
        #pragma unroll
        for (int c = 0; c < DC; c++) {
            int d = lane + 32 * c;
            if (d < hd) row[d] += scale * acc[rr][c];
        }
    }
}

/* ---- backward, dk and dv: a block per 32 keys of a kv head, over its query heads ------------- */
template <int DC>
__global__ void __launch_bounds__(TILE * ATT_WARPS)
k_attention_backward_dkv(float *dk, float *dv, const float *dout, const float *q, const float *k,
                         const float *v, const float *lse, const float *delta, int T, int S,
                         int H, int Hkv, int hd, float scale) {
    extern __shared__ float smem[];
    int pitch = hd + 1;
    float *Ks = smem;                 /* (TILE, hd)   a warp reads one key row at once */
    float *Vs = Ks + TILE * hd;       /* (TILE, hd) */
    float *Qs = Vs + TILE * hd;       /* (TILE, hd+1) lane i reads row i: padded pitch */
    float *dOs = Qs + TILE * pitch;   /* (TILE, hd+1) */
    float *lse_s = dOs + TILE * pitch; /* (TILE) */
    float *delta_s = lse_s + TILE;    /* (TILE) */
    int j0 = blockIdx.x * TILE, g = blockIdx.y, b = blockIdx.z;
    int group = H / Hkv, off = S - T;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    size_t q_stride = (size_t)H * hd, kv_stride = (size_t)Hkv * hd;
    size_t kv_base = ((size_t)b * S * Hkv + g) * hd;

    load_tile(Ks, hd, k + kv_base, j0, S, kv_stride, hd);
    load_tile(Vs, hd, v + kv_base, j0, S, kv_stride, hd);
    float acc_k[ROWS_PER_WARP][DC], acc_v[ROWS_PER_WARP][DC];
    #pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++)
        #pragma unroll
        for (int c = 0; c < DC; c++) acc_k[rr][c] = acc_v[rr][c] = 0.0f;

    /* Queries i see key j when j <= off + i: the first query seeing key j0 is j0 - off. */
    int first_query = j0 - off > 0 ? j0 - off : 0;
    for (int h = g * group; h < (g + 1) * group; h++) {
        size_t q_base = ((size_t)b * T * H + h) * hd;
        const float *lse_h = lse + ((size_t)b * H + h) * T;
        const float *delta_h = delta + ((size_t)b * H + h) * T;
        for (int q0 = (first_query / TILE) * TILE; q0 < T; q0 += TILE) {
            __syncthreads();
            load_tile(Qs, pitch, q + q_base, q0, T, q_stride, hd);
            load_tile(dOs, pitch, dout + q_base, q0, T, q_stride, hd);
            if (threadIdx.x < TILE) {
                int i = q0 + threadIdx.x;
                lse_s[threadIdx.x] = i < T ? lse_h[i] : 0.0f;
                delta_s[threadIdx.x] = i < T ? delta_h[i] : 0.0f;
            }
            __syncthreads();
            #pragma unroll
            for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
                int kk = warp + ATT_WARPS * rr, j = j0 + kk;
                if (j >= S) continue;
                int i = q0 + lane;
                bool valid = i < T && j <= off + i;
                if (!__any_sync(0xffffffffu, valid)) continue;
                float p = 0.0f, ds = 0.0f;
                if (valid) {
                    float s = dot_shared(Qs + lane * pitch, Ks + kk * hd, hd) * scale;
                    p = expf(s - lse_s[lane]);
                    float dp = dot_shared(dOs + lane * pitch, Vs + kk * hd, hd);
                    ds = p * (dp - delta_s[lane]);
                }
                for (int ii = 0; ii < TILE; ii++) {
                    float pi = __shfl_sync(0xffffffffu, p, ii);
                    float dsi = __shfl_sync(0xffffffffu, ds, ii);
                    #pragma unroll
                    for (int c = 0; c < DC; c++) {
                        int d = lane + 32 * c;
                        if (d < hd) {
                            acc_v[rr][c] += pi * dOs[ii * pitch + d];
                            acc_k[rr][c] += dsi * Qs[ii * pitch + d];
                        }
                    }
                }
            }
        }
    }
    #pragma unroll
    for (int rr = 0; rr < ROWS_PER_WARP; rr++) {
        int j = j0 + warp + ATT_WARPS * rr;
        if (j >= S) continue;
        float *krow = dk + kv_base + (size_t)j * kv_stride;
        float *vrow = dv + kv_base + (size_t)j * kv_stride;
        #pragma unroll
        for (int c = 0; c < DC; c++) {
            int d = lane + 32 * c;
            if (d < hd) {
                krow[d] += scale * acc_k[rr][c];
                vrow[d] += acc_v[rr][c];
            }
        }
    }
}

/* ---- launchers ------------------------------------------------------------------------------ */
static int column_chunks(int hd) {
    if (hd <= 32) return 1;
    if (hd <= 64) return 2;
    if (hd <= 128) return 4;
    if (hd <= 256) return 8;
    fprintf(stderr, "etmoe: cuda backend: attention head dimension %d is over the supported 256\n",
            hd);
    abort();
}

/* Allows `bytes` of dynamic shared memory for kernel, failing clearly when the device has less. */
template <typename F> static void allow_smem(etm_cuda_ctx *c, F kernel, size_t bytes, int hd) {
    if (bytes > (size_t)c->max_smem_optin) {
        fprintf(stderr,
                "etmoe: cuda backend: attention with head dimension %d needs %zu bytes of shared "
                "memory per block; this device allows %d\n",
                hd, bytes, c->max_smem_optin);
        abort();
    }
    if (bytes > 48 * 1024)
        ETM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            (int)bytes));
}

template <int DC>
static void forward_dc(etm_cuda_ctx *c, float *out, float *lse, const float *q, const float *k,
                       const float *v, int B, int T, int S, int H, int Hkv, int hd) {
    size_t smem = (size_t)(TILE * hd + 2 * TILE * (hd + 1)) * sizeof(float);
    allow_smem(c, k_attention_forward<DC>, smem, hd);
    dim3 grid((T + TILE - 1) / TILE, H, B);
    k_attention_forward<DC><<<grid, TILE * ATT_WARPS, smem, c->stream>>>(
        out, lse, q, k, v, T, S, H, Hkv, hd, 1.0f / sqrtf((float)hd));
    ETM_CUDA_LAUNCHED();
}

void etm_cuda_attention_forward(etm_backend *be, float *out, float *lse, const float *q,
                                const float *k, const float *v, int B, int T, int S, int H,
                                int Hkv, int hd) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    switch (column_chunks(hd)) {
    case 1: forward_dc<1>(c, out, lse, q, k, v, B, T, S, H, Hkv, hd); break;
    case 2: forward_dc<2>(c, out, lse, q, k, v, B, T, S, H, Hkv, hd); break;
    case 4: forward_dc<4>(c, out, lse, q, k, v, B, T, S, H, Hkv, hd); break;
    default: forward_dc<8>(c, out, lse, q, k, v, B, T, S, H, Hkv, hd); break;
    }
}

template <int DC>
static void backward_dc(etm_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *k, const float *v, const float *lse,
                        const float *delta, int B, int T, int S, int H, int Hkv, int hd) {
    float scale = 1.0f / sqrtf((float)hd);
    size_t smem_dq = (size_t)(2 * TILE * hd + 2 * TILE * (hd + 1)) * sizeof(float);
    allow_smem(c, k_attention_backward_dq<DC>, smem_dq, hd);
    dim3 grid_q((T + TILE - 1) / TILE, H, B);
    k_attention_backward_dq<DC><<<grid_q, TILE * ATT_WARPS, smem_dq, c->stream>>>(
        dq, dout, q, k, v, lse, delta, T, S, H, Hkv, hd, scale);
    ETM_CUDA_LAUNCHED();
    size_t smem_kv = (size_t)(2 * TILE * hd + 2 * TILE * (hd + 1) + 2 * TILE) * sizeof(float);
    allow_smem(c, k_attention_backward_dkv<DC>, smem_kv, hd);
    dim3 grid_kv((S + TILE - 1) / TILE, Hkv, B);
    k_attention_backward_dkv<DC><<<grid_kv, TILE * ATT_WARPS, smem_kv, c->stream>>>(
        dk, dv, dout, q, k, v, lse, delta, T, S, H, Hkv, hd, scale);
    ETM_CUDA_LAUNCHED();
}

void etm_cuda_attention_backward(etm_backend *be, float *dq, float *dk, float *dv,
                                 const float *dout, const float *q, const float *k,
                                 const float *v, const float *out, const float *lse, int B, int T,
                                 int S, int H, int Hkv, int hd) {
    etm_cuda_ctx *c = etm_cuda(be);
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    int rows = B * T * H;
    float *delta = (float *)etm_cuda_scratch(be, (size_t)rows * sizeof(float)); /* (B,H,T) */
    k_attention_delta<<<(rows + ATT_WARPS - 1) / ATT_WARPS, TILE * ATT_WARPS, 0, c->stream>>>(
        delta, dout, out, B, T, H, hd);
    ETM_CUDA_LAUNCHED();
    switch (column_chunks(hd)) {
    case 1: backward_dc<1>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, S, H, Hkv, hd); break;
    case 2: backward_dc<2>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, S, H, Hkv, hd); break;
    case 4: backward_dc<4>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, S, H, Hkv, hd); break;
    default: backward_dc<8>(c, dq, dk, dv, dout, q, k, v, lse, delta, B, T, S, H, Hkv, hd); break;
    }
}
