/* cpu_elementwise.c: the CPU backend's elementwise operations (fill, scale, axpy, relu^2, sigmoid,
 * softcap, AdamW), its reductions (sum of squares, column sums) and row broadcasts.
 *
 * Elementwise loops use static partitions: each element is computed by the same expression on any
 * thread. sum_squares reduces fixed blocks in block order; column_sum sums each column in row
 * order. Neither depends on the thread count.
 *
 * Speed: the loops are `parallel for simd` and branch-free (relu as a max, not a branch): gcc's
 * -O2 vectoriser otherwise gives up on them (possible aliasing, its very-cheap cost model) and a
 * data-dependent branch on ReLU inputs mispredicts half the time. The vector and scalar
 * iterations perform the same IEEE operations (no fused multiply-adds), so how a loop is split
 * into vectors and threads does not change any element. */
#include <config.h>

#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void cpu_fill(etm_backend *be, float *x, float value, size_t n) {
    (void)be;
    long len = (long)n;
    ETM_OMP(parallel for simd schedule(static) if (len >= CPU_PAR_MIN))
    for (long i = 0; i < len; i++) x[i] = value;
}

void cpu_scale(etm_backend *be, float *x, float a, size_t n) {
    (void)be;
    long len = (long)n;
    ETM_OMP(parallel for simd schedule(static) if (len >= CPU_PAR_MIN))
    for (long i = 0; i < len; i++) x[i] *= a;
}

void cpu_axpy(etm_backend *be, float *y, float a, const float *x, size_t n) {
    (void)be;
    long len = (long)n;
    ETM_OMP(parallel for simd schedule(static) if (len >= CPU_PAR_MIN))
    for (long i = 0; i < len; i++) y[i] += a * x[i];
}

double cpu_sum_squares(etm_backend *be, const float *x, size_t n) {
    (void)be;
    long blocks = (long)((n + CPU_REDUCE_BLOCK - 1) / CPU_REDUCE_BLOCK);
    if (blocks == 0) return 0.0;
    double stack_partial[256]; /* up to 2M elements without a malloc (Muon calls this per matrix) */
    double *partial = blocks <= 256 ? stack_partial : etm_malloc((size_t)blocks * sizeof *partial);
    ETM_OMP(parallel for schedule(static) if (blocks > 1))
    for (long b = 0; b < blocks; b++) {
        size_t i0 = (size_t)b * CPU_REDUCE_BLOCK, i1 = ETM_MIN(n, i0 + CPU_REDUCE_BLOCK);
        /* four running sums interleaved, combined in a fixed order: vectorisable and exact order */
        double s[4] = {0, 0, 0, 0};
        size_t i = i0;
        for (; i + 4 <= i1; i += 4)
            for (int j = 0; j < 4; j++) s[j] += (double)x[i + j] * (double)x[i + j];
        for (; i < i1; i++) s[0] += (double)x[i] * (double)x[i];
        partial[b] = (s[0] + s[1]) + (s[2] + s[3]);
    }
    double total = 0.0;
    for (long b = 0; b < blocks; b++) total += partial[b];
    if (partial != stack_partial) free(partial);
    return total;
}

void cpu_column_sum(etm_backend *be, float *out, const float *in, int N, int E) {
    (void)be;
    /* Columns in chunks of 16, each chunk summed down the rows in row order. */
    int chunks = (E + 15) / 16;
    ETM_OMP(parallel for schedule(static) if ((long)N * E >= CPU_PAR_MIN && chunks > 1))
    for (int c = 0; c < chunks; c++) {
        int e0 = c * 16, e1 = ETM_MIN(E, e0 + 16);
        double acc[16] = {0};
        for (int n = 0; n < N; n++) {
            const float *row = in + (size_t)n * E;
            for (int e = e0; e < e1; e++) acc[e - e0] += row[e];
        }
        for (int e = e0; e < e1; e++) out[e] = (float)acc[e - e0];
    }
}

void cpu_add_row_vector(etm_backend *be, float *y, const float *v, int N, int E) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * E >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        float *row = y + (size_t)n * E;
        ETM_OMP(simd)
        for (int e = 0; e < E; e++) row[e] += v[e];
    }
}

void cpu_add_scaled_rows(etm_backend *be, float *y, const float *a, const float *x, int N, int E) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * E >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        float *yr = y + (size_t)n * E;
        const float *xr = x + (size_t)n * E;
        float an = a[n];
        ETM_OMP(simd)
        for (int e = 0; e < E; e++) yr[e] += an * xr[e];
    }
}

/* relu(x) = max(x, 0) without a branch; NaN gives 0 (as x > 0 ? x : 0 does). */
static inline float relu(float x) { return cpu_select(x > 0.0f, x, 0.0f); }

void cpu_relu2_forward(etm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
    long len = (long)n;
    ETM_OMP(parallel for simd schedule(static) if (len >= CPU_PAR_MIN))
    for (long i = 0; i < len; i++) {
        float r = relu(x[i]);
        out[i] = r * r;
    }
}

void cpu_relu2_backward(etm_backend *be, float *dx, const float *dout, const float *x, size_t n) {
    (void)be;
    long len = (long)n;
    ETM_OMP(parallel for simd schedule(static) if (len >= CPU_PAR_MIN))
    for (long i = 0; i < len; i++) dx[i] += dout[i] * (2.0f * relu(x[i]));
}

/* Pieces of long vectors handed to the vectorised row loops of cpu_vector.c. */
#define CPU_PIECE 8192

void cpu_sigmoid_forward(etm_backend *be, float *out, const float *x, size_t n) {
    (void)be;
    long pieces = (long)((n + CPU_PIECE - 1) / CPU_PIECE);
    ETM_OMP(parallel for schedule(static) if (n >= CPU_PAR_MIN))
    for (long c = 0; c < pieces; c++) {
        size_t i0 = (size_t)c * CPU_PIECE;
        cpu_vsigmoid(out + i0, x + i0, (int)ETM_MIN((size_t)CPU_PIECE, n - i0));
    }
}

void cpu_sigmoid_backward(etm_backend *be, float *dx, const float *dout, const float *out,
                          size_t n) {
    (void)be;
    long len = (long)n;
    ETM_OMP(parallel for simd schedule(static) if (len >= CPU_PAR_MIN))
    for (long i = 0; i < len; i++) dx[i] += dout[i] * out[i] * (1.0f - out[i]);
}

void cpu_softcap(etm_backend *be, float *out, const float *x, size_t n, float cap) {
    (void)be;
    long len = (long)n;
    if (!(cap > 0.0f)) { /* no cap: the identity */
        if (out != x) memmove(out, x, n * sizeof *out);
        return;
    }
    long pieces = (len + CPU_PIECE - 1) / CPU_PIECE;
    ETM_OMP(parallel for schedule(static) if (len >= CPU_PAR_MIN))
    for (long c = 0; c < pieces; c++) {
        size_t i0 = (size_t)c * CPU_PIECE;
        cpu_vsoftcap(out + i0, x + i0, cap, (int)ETM_MIN((size_t)CPU_PIECE, n - i0));
    }
}

/* One AdamW element; the SSE path below performs the same IEEE operations four at a time. */
static inline float adamw1(float *p, float g, float *m, float *v, float lr, float b1, float b2,
                           float eps, float wd, float bc1, float bc2) {
    float mi = b1 * *m + (1.0f - b1) * g;
    float vi = b2 * *v + (1.0f - b2) * g * g;
    *m = mi;
    *v = vi;
    return *p - lr * (mi / bc1 / (sqrtf(vi / bc2) + eps) + wd * *p);
}

void cpu_adamw_update(etm_backend *be, float *p, const float *g, float *m, float *v, size_t n,
                      float lr, float b1, float b2, float eps, float wd, float bc1, float bc2) {
    (void)be;
    long pieces = (long)((n + CPU_PIECE - 1) / CPU_PIECE);
    ETM_OMP(parallel for schedule(static) if (n >= CPU_PAR_MIN))
    for (long c = 0; c < pieces; c++) {
        size_t i = (size_t)c * CPU_PIECE, end = ETM_MIN(n, i + CPU_PIECE);
#ifdef __SSE2__
        /* sqrtf cannot vectorise (errno), sqrtps can: both are correctly rounded */
        const __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vc1 = _mm_set1_ps(1.0f - b1);
        const __m128 vc2 = _mm_set1_ps(1.0f - b2), vlr = _mm_set1_ps(lr), veps = _mm_set1_ps(eps);
        const __m128 vwd = _mm_set1_ps(wd), vbc1 = _mm_set1_ps(bc1), vbc2 = _mm_set1_ps(bc2);
        for (; i + 4 <= end; i += 4) {
            __m128 gi = _mm_loadu_ps(g + i), pi = _mm_loadu_ps(p + i);
            __m128 mi = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(m + i)), _mm_mul_ps(vc1, gi));
            __m128 vi = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(v + i)),
                                   _mm_mul_ps(_mm_mul_ps(vc2, gi), gi));
            _mm_storeu_ps(m + i, mi);
            _mm_storeu_ps(v + i, vi);
            __m128 den = _mm_add_ps(_mm_sqrt_ps(_mm_div_ps(vi, vbc2)), veps);
            __m128 step = _mm_add_ps(_mm_div_ps(_mm_div_ps(mi, vbc1), den), _mm_mul_ps(vwd, pi));
            _mm_storeu_ps(p + i, _mm_sub_ps(pi, _mm_mul_ps(vlr, step)));
        }
#endif
        for (; i < end; i++) p[i] = adamw1(&p[i], g[i], &m[i], &v[i], lr, b1, b2, eps, wd, bc1, bc2);
    }
}
