/* cpu_attention.c: the CPU backend's causal grouped-query attention, forward and backward.
 *
 * Work is cut into tasks of (batch, query head, block of ATT_ROWS query rows). A task computes the
 * block's scores against only the keys its last row can see (so the causal triangle costs about
 * half a full product), with two single-threaded sgemm calls forward (Q K^T, then P V) and four
 * backward. Softmax rows keep their log-sum-exp; the backward recomputes the probabilities from it
 * instead of storing the T x S matrix.
 *
 * Determinism: the blocks depend only on T, and each output element is written by one task.
 * Backward tasks cover a whole (batch, query head) so that its row blocks add into dK and dV in
 * order; when several query heads share a kv head (H > Hkv) each head adds into its own buffer
 * and the buffers are summed into dK, dV in head order afterwards. */
#include <config.h>

#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>

#define ATT_ROWS 64 /* query rows per block */

/* Geometry shared by forward and backward. Strides are in floats. */
typedef struct {
    int B, T, S, H, Hkv, hd;
    int group;       /* H / Hkv query heads per kv head */
    size_t ldq, ldk; /* row strides of q (B,T,H,hd) and k (B,S,Hkv,hd) */
    float scale;     /* 1/sqrt(hd) */
    int blocks;      /* query row blocks per (batch, head) */
} att_shape;

static att_shape make_shape(int B, int T, int S, int H, int Hkv, int hd) {
    att_shape a = {B,
                   T,
                   S,
                   H,
                   Hkv,
                   hd,
                   H / Hkv,
                   (size_t)H * hd,
                   (size_t)Hkv * hd,
                   1.0f / sqrtf((float)hd),
                   (T + ATT_ROWS - 1) / ATT_ROWS};
    return a;
}

/* Scores of rows [i0, i1) of (b, h) against keys [0, n_keys) into P (rows, n_keys), scaled. */
static void block_scores(const att_shape *a, float *P, const float *q, const float *k, int b, int h,
                         int i0, int i1, int n_keys) {
    const float *qb = q + ((size_t)b * a->T + i0) * a->ldq + (size_t)h * a->hd;
    const float *kb = k + (size_t)b * a->S * a->ldk + (size_t)(h / a->group) * a->hd;
    cpu_sgemm_1thread(ETM_NO_TRANS, ETM_TRANS, i1 - i0, n_keys, a->hd, a->scale, qb, (int)a->ldq,
                      kb, (int)a->ldk, 0.0f, P, n_keys);
}

void cpu_attention_forward(etm_backend *be, float *out, float *lse, const float *q, const float *k,
                           const float *v, int B, int T, int S, int H, int Hkv, int hd) {
    (void)be;
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    att_shape a = make_shape(B, T, S, H, Hkv, hd);
    long tasks = (long)B * H * a.blocks;
    ETM_OMP(parallel) {
        float *P = etm_malloc((size_t)ATT_ROWS * S * sizeof *P);
        float inv[ATT_ROWS]; /* 1 / sum of each row's exponentials */
        ETM_OMP(for schedule(dynamic, 1))
        for (long task = 0; task < tasks; task++) {
            int blk = (int)(task % a.blocks), h = (int)(task / a.blocks % H);
            int b = (int)(task / a.blocks / H);
            int i0 = blk * ATT_ROWS, i1 = ETM_MIN(T, i0 + ATT_ROWS), rows = i1 - i0;
            int n_keys = S - T + i1; /* the last row sees keys [0, S-T+i1) */
            block_scores(&a, P, q, k, b, h, i0, i1, n_keys);
            for (int r = 0; r < rows; r++) {
                float *p = P + (size_t)r * n_keys;
                int visible = S - T + i0 + r + 1;
                float m = cpu_vmax(p, visible);
                cpu_vexp(p, p, m, visible);
                double sum = cpu_sum(p, visible);
                inv[r] = (float)(1.0 / sum);
                for (int j = visible; j < n_keys; j++) p[j] = 0.0f;
                lse[((size_t)b * H + h) * T + i0 + r] = m + (float)log(sum);
            }
            /* out = (exp(S - m) V) / sum: normalising the hd outputs, not the n_keys weights */
            const float *vb = v + (size_t)b * S * a.ldk + (size_t)(h / a.group) * hd;
            float *ob = out + ((size_t)b * T + i0) * a.ldq + (size_t)h * hd;
            cpu_sgemm_1thread(ETM_NO_TRANS, ETM_NO_TRANS, rows, hd, n_keys, 1.0f, P, n_keys, vb,
                              (int)a.ldk, 0.0f, ob, (int)a.ldq);
            for (int r = 0; r < rows; r++) {
                float *o = ob + (size_t)r * a.ldq;
                for (int d = 0; d < hd; d++) o[d] *= inv[r];
            }
        }
        free(P);
    }
}

void cpu_attention_backward(etm_backend *be, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, const float *k, const float *v, const float *out,
                            const float *lse, int B, int T, int S, int H, int Hkv, int hd) {
    (void)be;
    if (B <= 0 || T <= 0 || H <= 0 || hd <= 0) return;
    att_shape a = make_shape(B, T, S, H, Hkv, hd);
    /* With kv heads shared, each query head's dK, dV go to a private (B, H, S, hd) buffer first. */
    int shared = a.group > 1;
    float *pk = NULL, *pv = NULL;
    if (shared) {
        pk = etm_calloc((size_t)B * H * S * hd, sizeof *pk);
        pv = etm_calloc((size_t)B * H * S * hd, sizeof *pv);
    }
    long tasks = (long)B * H;
    ETM_OMP(parallel) {
        float *P = etm_malloc((size_t)ATT_ROWS * S * sizeof *P);
        float *dP = etm_malloc((size_t)ATT_ROWS * S * sizeof *dP);
        ETM_OMP(for schedule(dynamic, 1))
        for (long task = 0; task < tasks; task++) {
            int h = (int)(task % H), b = (int)(task / H), g = h / a.group;
            const float *kb = k + (size_t)b * S * a.ldk + (size_t)g * hd;
            const float *vb = v + (size_t)b * S * a.ldk + (size_t)g * hd;
            float *dkb, *dvb;
            int lddk;
            if (shared) {
                dkb = pk + ((size_t)b * H + h) * S * hd;
                dvb = pv + ((size_t)b * H + h) * S * hd;
                lddk = hd;
            } else {
                dkb = dk + (size_t)b * S * a.ldk + (size_t)g * hd;
                dvb = dv + (size_t)b * S * a.ldk + (size_t)g * hd;
                lddk = (int)a.ldk;
            }
            for (int blk = 0; blk < a.blocks; blk++) {
                int i0 = blk * ATT_ROWS, i1 = ETM_MIN(T, i0 + ATT_ROWS), rows = i1 - i0;
                int n_keys = S - T + i1;
                size_t row0 = ((size_t)b * T + i0) * a.ldq + (size_t)h * hd;
                const float *qb = q + row0, *ob = out + row0, *dob = dout + row0;
                float *dqb = dq + row0;
                block_scores(&a, P, q, k, b, h, i0, i1, n_keys);
                /* dP = dO V^T */
                cpu_sgemm_1thread(ETM_NO_TRANS, ETM_TRANS, rows, n_keys, hd, 1.0f, dob, (int)a.ldq,
                                  vb, (int)a.ldk, 0.0f, dP, n_keys);
                for (int r = 0; r < rows; r++) {
                    float *p = P + (size_t)r * n_keys, *dp = dP + (size_t)r * n_keys;
                    int visible = S - T + i0 + r + 1;
                    float l = lse[((size_t)b * H + h) * T + i0 + r];
                    const float *o_r = ob + (size_t)r * a.ldq, *do_r = dob + (size_t)r * a.ldq;
                    double di = 0.0; /* D_i = dot(dO_i, O_i) = sum_j P_ij dP_ij */
                    for (int d = 0; d < hd; d++) di += (double)do_r[d] * o_r[d];
                    float fdi = (float)di;
                    cpu_vattention_ds(p, dp, l, fdi, visible); /* P and dS */
                    for (int j = visible; j < n_keys; j++) p[j] = dp[j] = 0.0f;
                }
                /* dV += P^T dO; dQ += scale dS K; dK += scale dS^T Q */
                cpu_sgemm_1thread(ETM_TRANS, ETM_NO_TRANS, n_keys, hd, rows, 1.0f, P, n_keys, dob,
                                  (int)a.ldq, 1.0f, dvb, lddk);
                cpu_sgemm_1thread(ETM_NO_TRANS, ETM_NO_TRANS, rows, hd, n_keys, a.scale, dP, n_keys,
                                  kb, (int)a.ldk, 1.0f, dqb, (int)a.ldq);
                cpu_sgemm_1thread(ETM_TRANS, ETM_NO_TRANS, n_keys, hd, rows, a.scale, dP, n_keys,
                                  qb, (int)a.ldq, 1.0f, dkb, lddk);
            }
        }
        free(P);
        free(dP);
        if (shared) {
            /* dK, dV (B,S,Hkv,hd) += the group's buffers in head order; rows split over threads */
            long kv_rows = (long)B * S * Hkv;
            ETM_OMP(for schedule(static))
            for (long row = 0; row < kv_rows; row++) {
                int g = (int)(row % Hkv), s = (int)(row / Hkv % S), b = (int)(row / Hkv / S);
                float *dkr = dk + (size_t)row * hd, *dvr = dv + (size_t)row * hd;
                for (int h = g * a.group; h < (g + 1) * a.group; h++) {
                    const float *sk = pk + (((size_t)b * H + h) * S + s) * hd;
                    const float *sv = pv + (((size_t)b * H + h) * S + s) * hd;
                    for (int d = 0; d < hd; d++) {
                        dkr[d] += sk[d];
                        dvr[d] += sv[d];
                    }
                }
            }
        }
    }
    free(pk);
    free(pv);
}
