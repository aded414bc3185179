/* cpu_layers.c: the CPU backend's token embedding, RMSNorm (without weights) and rotary position
 * embedding, forward and backward.
 *
 * Each output row belongs to one thread and is reduced in a fixed order. The embedding's backward
 * scatter partitions the channels of dwte instead of the tokens, so that every dwte element adds
 * its tokens' contributions in token order, on whichever thread: no atomics, no thread-dependent
 * order. */
#include <config.h>

#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>

void cpu_embedding_forward(etm_backend *be, float *out, const float *wte, const int32_t *tokens,
                           int N, int D) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * D >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * D, wte + (size_t)tokens[n] * D, (size_t)D * sizeof *out);
}

/* Channels per task of the embedding backward: 16 floats, one cache line of each row. */
#define EMB_CHANNELS 16

void cpu_embedding_backward(etm_backend *be, float *dwte, const float *dout, const int32_t *tokens,
                            int N, int D, int V) {
    (void)be;
    int chunks = (D + EMB_CHANNELS - 1) / EMB_CHANNELS;
    ETM_OMP(parallel for schedule(static) if ((long)N * D >= CPU_PAR_MIN))
    for (int c = 0; c < chunks; c++) {
        int d0 = c * EMB_CHANNELS, d1 = ETM_MIN(D, d0 + EMB_CHANNELS);
        for (int n = 0; n < N; n++) {
            int32_t tok = tokens[n];
            if (tok < 0 || tok >= V) continue; /* not a token: nothing to scatter */
            float *dst = dwte + (size_t)tok * D;
            const float *src = dout + (size_t)n * D;
            for (int d = d0; d < d1; d++) dst[d] += src[d];
        }
    }
}

/* Sum of squares of a row in float, eight interleaved partial sums combined in a fixed order:
 * vectorisable, and the same on every thread. */
static float row_sum_squares(const float *x, int C) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= C; i += 8)
        for (int j = 0; j < 8; j++) s[j] += x[i + j] * x[i + j];
    for (; i < C; i++) s[0] += x[i] * x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static float row_dot(const float *x, const float *y, int C) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= C; i += 8)
        for (int j = 0; j < 8; j++) s[j] += x[i + j] * y[i + j];
    for (; i < C; i++) s[0] += x[i] * y[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void cpu_rmsnorm_forward(etm_backend *be, float *out, float *rstd, const float *x, int N, int C,
                         float eps) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * C >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        float *o = out + (size_t)n * C;
        float r = 1.0f / sqrtf(row_sum_squares(xr, C) / (float)C + eps);
        ETM_OMP(simd)
        for (int i = 0; i < C; i++) o[i] = xr[i] * r;
        rstd[n] = r;
    }
}

void cpu_rmsnorm_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                          const float *rstd, int N, int C) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * C >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        const float *g = dout + (size_t)n * C, *o = out + (size_t)n * C;
        float *d = dx + (size_t)n * C;
        float mean = row_dot(g, o, C) / (float)C, r = rstd[n];
        ETM_OMP(simd)
        for (int i = 0; i < C; i++) d[i] += r * (g[i] - o[i] * mean);
    }
}

/* One head: (x1, x2) rotated by the angles whose cosines and sines (times sign) are c, s. The
 * halves do not overlap, the tables are read only: restrict lets the loop vectorise. */
static inline void rope_head(float *restrict x1, float *restrict x2, const float *restrict c,
                             const float *restrict s, int half) {
    ETM_OMP(simd)
    for (int i = 0; i < half; i++) {
        float a = x1[i], b = x2[i];
        x1[i] = a * c[i] + b * s[i];
        x2[i] = b * c[i] - a * s[i];
    }
}

/* Rotates each head's halves (x1, x2) by the angle of its position; sign -1 undoes it (the sines
 * are negated once per position, exactly, instead of once per head and element). */
static void rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int T, int H,
                       int hd, int pos0, float sign) {
    int half = hd / 2;
    long rows = (long)B * T;
    ETM_OMP(parallel if (rows * H * hd >= CPU_PAR_MIN)) {
        float *neg = sign < 0.0f ? etm_malloc((size_t)(half > 0 ? half : 1) * sizeof *neg) : NULL;
        ETM_OMP(for schedule(static))
        for (long bt = 0; bt < rows; bt++) {
            int t = (int)(bt % T);
            const float *c = cos_t + (size_t)(pos0 + t) * half;
            const float *s = sin_t + (size_t)(pos0 + t) * half;
            if (neg) {
                for (int i = 0; i < half; i++) neg[i] = -s[i];
                s = neg;
            }
            for (int h = 0; h < H; h++) {
                float *x1 = x + ((size_t)bt * H + h) * hd;
                rope_head(x1, x1 + half, c, s, half);
            }
        }
        free(neg);
    }
}

void cpu_rope_forward(etm_backend *be, float *x, const float *cos_t, const float *sin_t, int B,
                      int T, int H, int hd, int pos0) {
    (void)be;
    rope_apply(x, cos_t, sin_t, B, T, H, hd, pos0, 1.0f);
}

void cpu_rope_backward(etm_backend *be, float *dx, const float *cos_t, const float *sin_t, int B,
                       int T, int H, int hd, int pos0) {
    (void)be;
    rope_apply(dx, cos_t, sin_t, B, T, H, hd, pos0, -1.0f);
}
