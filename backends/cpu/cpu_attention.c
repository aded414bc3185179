/* cpu_attention.c: the CPU backend's causal grouped-query attention, forward and backward.
 *
 * A block is ATT_ROWS query positions of one batch row and ALL the query heads that share one kv
 * head, stacked as rows (position-major: row r is position i0 + r / group, head g group + r %
 * group). Stacking makes the products group times taller (256 rows for 4 heads per kv head) and
 * packs each K, V panel once for the group instead of once per head; sgemm runs much closer to
 * its peak on such blocks than on 64-row ones. For a fixed position the group's heads are
 * contiguous in q, out and dout, so a block is gathered with one memcpy per position.
 *
 * A block's scores are computed against only the keys its last position can see (so the causal
 * triangle costs about half a full product): two single-threaded sgemm calls forward (Q K^T,
 * P V) and five backward. Softmax rows keep their log-sum-exp; the backward recomputes the
 * probabilities from it instead of storing the T x S matrix.
 *
 * Determinism: blocks depend only on the shapes, and each output element has one writer. The
 * forward runs tasks of (batch, kv head, block). The backward runs one task per (batch, kv head),
 * which owns that kv head's dK and dV rows and adds its blocks into them in order; the sum over
 * the group's query heads happens inside each block's dK and dV products (their inner
 * dimension is the stacked rows), in a fixed order. No per-head partial buffers, no atomics.
 * The price is parallelism: B * Hkv backward tasks (16 for the bench model), enough for a few
 * cores, not for dozens.
 *
 * Scratch (per thread: the block's scores and its gathered rows) is kept in the backend
 * (cpu_scratch) rather than allocated per call. */
#include <config.h>

#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>

#define ATT_ROWS 64 /* query positions per block */

/* Geometry shared by forward and backward. Strides are in floats. */
typedef struct {
    int B, T, S, H, Hkv, hd;
    int group;       /* H / Hkv query heads per kv head */
    size_t ldq, ldk; /* row strides of q (B,T,H,hd) and k (B,S,Hkv,hd) */
    float scale;     /* 1/sqrt(hd) */
    int blocks;      /* query blocks per (batch, kv head) */
    int max_rows;    /* stacked rows of a full block: ATT_ROWS * group */
} att_shape;

static att_shape make_shape(int B, int T, int S, int H, int Hkv, int hd) {
    att_shape a;
    a.B = B;
    a.T = T;
    a.S = S;
    a.H = H;
    a.Hkv = Hkv;
    a.hd = hd;
    a.group = H / Hkv;
    a.ldq = (size_t)H * hd;
    a.ldk = (size_t)Hkv * hd;
    a.scale = 1.0f / sqrtf((float)hd);
    a.blocks = (T + ATT_ROWS - 1) / ATT_ROWS;
    a.max_rows = ATT_ROWS * a.group;
    return a;
}

/* One block of (batch b, kv head g): positions [i0, i1) of the queries, stacked rows, keys
 * [0, n_keys) (those its last position can see). */
typedef struct {
    int b, g, i0, i1;
    int rows;   /* (i1 - i0) * group */
    int n_keys; /* S - T + i1 */
} att_block;

static att_block make_block(const att_shape *a, int b, int g, int blk) {
    att_block k;
    k.b = b;
    k.g = g;
    k.i0 = blk * ATT_ROWS;
    k.i1 = ETM_MIN(a->T, k.i0 + ATT_ROWS);
    k.rows = (k.i1 - k.i0) * a->group;
    k.n_keys = a->S - a->T + k.i1;
    return k;
}

/* Offset in q, out or dout (B,T,H,hd) of the group's first head at query position i. */
static size_t query_offset(const att_shape *a, const att_block *k, int i) {
    return ((size_t)k->b * a->T + i) * a->ldq + (size_t)k->g * a->group * a->hd;
}

/* dst (rows, hd) = the block's stacked rows of x (B,T,H,hd). */
static void gather_block(const att_shape *a, const att_block *k, float *dst, const float *x) {
    size_t width = (size_t)a->group * a->hd;
    for (int i = k->i0; i < k->i1; i++)
        memcpy(dst + (size_t)(i - k->i0) * width, x + query_offset(a, k, i), width * sizeof *dst);
}

/* P (rows, n_keys) = scale * Qs K^T for the block's gathered queries Qs (rows, hd). */
static void block_scores(const att_shape *a, const att_block *k, float *P, const float *Qs,
                         const float *kmat) {
    const float *kb = kmat + (size_t)k->b * a->S * a->ldk + (size_t)k->g * a->hd;
    cpu_sgemm_1thread(ETM_NO_TRANS, ETM_TRANS, k->rows, k->n_keys, a->hd, a->scale, Qs, a->hd, kb,
                      (int)a->ldk, 0.0f, P, k->n_keys);
}

/* Keys visible to stacked row r of the block: positions 0 .. S - T + (its query position). */
static int visible_keys(const att_shape *a, const att_block *k, int r) {
    return a->S - a->T + k->i0 + r / a->group + 1;
}

/* Index in lse (B,H,T) of stacked row r. */
static size_t lse_index(const att_shape *a, const att_block *k, int r) {
    int h = k->g * a->group + r % a->group;
    return ((size_t)k->b * a->H + h) * a->T + k->i0 + r / a->group;
}

void cpu_attention_forward(etm_backend *be, float *out, float *lse, const float *q, const float *k,
                           const float *v, int B, int T, int S, int H, int Hkv, int hd) {
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    att_shape a = make_shape(B, T, S, H, Hkv, hd);
    long tasks = (long)B * Hkv * a.blocks;
    /* per thread: P (max_rows, S), Qs and Os (max_rows, hd), inv (max_rows) */
    size_t per_thread = (size_t)a.max_rows * ((size_t)S + 2 * (size_t)hd + 1);
    float *scratch = cpu_scratch(be, CPU_SCRATCH_ATT_ROWS,
                                 (size_t)cpu_max_threads() * per_thread * sizeof(float));
    ETM_OMP(parallel) {
        float *P = scratch + (size_t)cpu_thread_num() * per_thread;
        float *Qs = P + (size_t)a.max_rows * S, *Os = Qs + (size_t)a.max_rows * hd;
        float *inv = Os + (size_t)a.max_rows * hd; /* 1 / sum of each row's exponentials */
        ETM_OMP(for schedule(dynamic, 1))
        for (long task = 0; task < tasks; task++) {
            int blk = (int)(task % a.blocks), g = (int)(task / a.blocks % Hkv);
            att_block kb = make_block(&a, (int)(task / a.blocks / Hkv), g, blk);
            gather_block(&a, &kb, Qs, q);
            block_scores(&a, &kb, P, Qs, k);
            for (int r = 0; r < kb.rows; r++) {
                float *p = P + (size_t)r * kb.n_keys;
                int visible = visible_keys(&a, &kb, r);
                float m = cpu_vmax(p, visible);
                double sum = cpu_vexp_sum(p, p, m, visible);
                inv[r] = (float)(1.0 / sum);
                for (int j = visible; j < kb.n_keys; j++) p[j] = 0.0f;
                lse[lse_index(&a, &kb, r)] = m + (float)log(sum);
            }
            /* out = (exp(S - m) V) / sum: normalising the hd outputs, not the n_keys weights */
            const float *vb = v + (size_t)kb.b * S * a.ldk + (size_t)g * hd;
            cpu_sgemm_1thread(ETM_NO_TRANS, ETM_NO_TRANS, kb.rows, hd, kb.n_keys, 1.0f, P,
                              kb.n_keys, vb, (int)a.ldk, 0.0f, Os, hd);
            for (int r = 0; r < kb.rows; r++) {
                float *o = out + query_offset(&a, &kb, kb.i0 + r / a.group) + (size_t)(r % a.group) * hd;
                const float *src = Os + (size_t)r * hd;
                float s = inv[r];
                ETM_OMP(simd)
                for (int d = 0; d < hd; d++) o[d] = src[d] * s;
            }
        }
    }
}

void cpu_attention_backward(etm_backend *be, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, const float *out,
                            const float *lse, int B, int T, int S, int H, int Hkv, int hd) {
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    att_shape a = make_shape(B, T, S, H, Hkv, hd);
    long tasks = (long)B * Hkv;
    /* per thread: P and dP (max_rows, S), Qs, dOs, dQs (max_rows, hd) */
    size_t per_thread = (size_t)a.max_rows * (2 * (size_t)S + 3 * (size_t)hd);
    float *scratch = cpu_scratch(be, CPU_SCRATCH_ATT_ROWS,
                                 (size_t)cpu_max_threads() * per_thread * sizeof(float));
    ETM_OMP(parallel) {
        float *P = scratch + (size_t)cpu_thread_num() * per_thread;
        float *dP = P + (size_t)a.max_rows * S, *Qs = dP + (size_t)a.max_rows * S;
        float *dOs = Qs + (size_t)a.max_rows * hd, *dQs = dOs + (size_t)a.max_rows * hd;
        ETM_OMP(for schedule(dynamic, 1))
        for (long task = 0; task < tasks; task++) {
            int g = (int)(task % Hkv), b = (int)(task / Hkv);
            size_t kv0 = (size_t)b * S * a.ldk + (size_t)g * hd;
            const float *kb = k + kv0, *vb = v + kv0;
            float *dkb = dk + kv0, *dvb = dv + kv0;
            for (int blk = 0; blk < a.blocks; blk++) {
                att_block kk = make_block(&a, b, g, blk);
                int rows = kk.rows, n_keys = kk.n_keys;
                gather_block(&a, &kk, Qs, q);
                gather_block(&a, &kk, dOs, dout);
                block_scores(&a, &kk, P, Qs, k);
                /* dP = dO V^T */
                cpu_sgemm_1thread(ETM_NO_TRANS, ETM_TRANS, rows, n_keys, hd, 1.0f, dOs, hd, vb,
                                  (int)a.ldk, 0.0f, dP, n_keys);
                for (int r = 0; r < rows; r++) {
                    float *p = P + (size_t)r * n_keys, *dp = dP + (size_t)r * n_keys;
                    int visible = visible_keys(&a, &kk, r);
                    size_t off = query_offset(&a, &kk, kk.i0 + r / a.group) + (size_t)(r % a.group) * hd;
                    const float *o_r = out + off, *do_r = dOs + (size_t)r * hd;
                    double di = 0.0; /* D_i = dot(dO_i, O_i) = sum_j P_ij dP_ij */
                    for (int d = 0; d < hd; d++) di += (double)do_r[d] * o_r[d];
                    cpu_vattention_ds(p, dp, lse[lse_index(&a, &kk, r)], (float)di, visible);
                    for (int j = visible; j < n_keys; j++) p[j] = dp[j] = 0.0f;
                }
                /* dV += P^T dO and dK += scale dS^T Q, summed over the group's heads (the
                 * stacked rows); dQ = scale dS K, then added into each head's rows */
                cpu_sgemm_1thread(ETM_TRANS, ETM_NO_TRANS, n_keys, hd, rows, 1.0f, P, n_keys, dOs,
                                  hd, 1.0f, dvb, (int)a.ldk);
                cpu_sgemm_1thread(ETM_TRANS, ETM_NO_TRANS, n_keys, hd, rows, a.scale, dP, n_keys,
                                  Qs, hd, 1.0f, dkb, (int)a.ldk);
                cpu_sgemm_1thread(ETM_NO_TRANS, ETM_NO_TRANS, rows, hd, n_keys, a.scale, dP, n_keys,
                                  kb, (int)a.ldk, 0.0f, dQs, hd);
                size_t width = (size_t)a.group * hd;
                for (int i = kk.i0; i < kk.i1; i++) {
                    float *dst = dq + query_offset(&a, &kk, i);
                    const float *src = dQs + (size_t)(i - kk.i0) * width;
                    ETM_OMP(simd)
                    for (size_t d = 0; d < width; d++) dst[d] += src[d];
                }
            }
        }
    }
}
