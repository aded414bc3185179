/* cpu_gates.c: the CPU backend's router gate functions beside sigmoid and the row softmax
 * (backend.h gate_forward / gate_backward): relu, the row softmax with a zero-logit anchor, the
 * softmax over the rows of each column; and rows_dot, the per-row dot product the shared
 * experts' gate gradient needs.
 *
 * A row (or, for the column softmax, a column) belongs to one thread, and every sum runs in
 * double in a fixed order, so results do not depend on the thread count. Exponentials come from
 * cpu_math.h (cpu_expf), the same on every path. */
#include <config.h>

#include "cpu_internal.h"
#include "cpu_math.h"

#include <math.h>

/* Anchored row: shares of [0, x_1..x_E]; the anchor's share is returned. */
static float anchor_row(float *o, const float *x, int E) {
    float m = cpu_vmax(x, E);
    if (!(m > 0.0f)) m = 0.0f; /* the anchor's logit 0 takes part in the max */
    double s = cpu_vexp_sum(o, x, m, E) + (double)cpu_expf(-m);
    float inv = (float)(1.0 / s);
    for (int e = 0; e < E; e++) o[e] *= inv;
    return cpu_expf(-m) * inv;
}

/* Softmax over the N rows of column e. */
static void softmax_column(float *out, const float *x, int N, int E, int e) {
    float m = -INFINITY;
    for (int n = 0; n < N; n++) m = fmaxf(m, x[(size_t)n * E + e]);
    double s = 0.0;
    for (int n = 0; n < N; n++) {
        float v = cpu_expf(x[(size_t)n * E + e] - m);
        out[(size_t)n * E + e] = v;
        s += v;
    }
    float inv = (float)(1.0 / s);
    for (int n = 0; n < N; n++) out[(size_t)n * E + e] *= inv;
}

void cpu_gate_forward(etm_backend *be, etm_gate_op op, float *out, float *anchor, const float *x,
                      int N, int E) {
    (void)be;
    size_t n = (size_t)N * E;
    switch (op) {
    case ETM_GATE_OP_RELU:
        ETM_OMP(parallel for schedule(static) if ((long)n >= CPU_PAR_MIN))
        for (long i = 0; i < (long)n; i++) out[i] = x[i] > 0.0f ? x[i] : 0.0f;
        break;
    case ETM_GATE_OP_SOFTMAX_ANCHOR:
        ETM_OMP(parallel for schedule(static) if ((long)n >= CPU_PAR_MIN))
        for (int r = 0; r < N; r++) {
            float a = anchor_row(out + (size_t)r * E, x + (size_t)r * E, E);
            if (anchor) anchor[r] = a;
        }
        break;
    case ETM_GATE_OP_SOFTMAX_COLUMNS:
        ETM_OMP(parallel for schedule(static) if ((long)n >= CPU_PAR_MIN))
        for (int e = 0; e < E; e++) softmax_column(out, x, N, E, e);
        break;
    }
}

void cpu_gate_backward(etm_backend *be, etm_gate_op op, float *dx, const float *dout,
                       const float *danchor, const float *out, const float *anchor, int N, int E) {
    (void)be;
    size_t n = (size_t)N * E;
    switch (op) {
    case ETM_GATE_OP_RELU:
        /* d relu / dx = [x > 0] = [out > 0] */
        ETM_OMP(parallel for schedule(static) if ((long)n >= CPU_PAR_MIN))
        for (long i = 0; i < (long)n; i++)
            if (out[i] > 0.0f) dx[i] += dout[i];
        break;
    case ETM_GATE_OP_SOFTMAX_ANCHOR:
        /* dx_i += p_i (g_i - sum_j p_j g_j - p_0 g_0): the anchor is a constant input */
        ETM_OMP(parallel for schedule(static) if ((long)n >= CPU_PAR_MIN))
        for (int r = 0; r < N; r++) {
            const float *g = dout + (size_t)r * E, *p = out + (size_t)r * E;
            double dot = danchor ? (double)danchor[r] * anchor[r] : 0.0;
            for (int e = 0; e < E; e++) dot += (double)g[e] * p[e];
            float fd = (float)dot;
            float *d = dx + (size_t)r * E;
            for (int e = 0; e < E; e++) d[e] += p[e] * (g[e] - fd);
        }
        break;
    case ETM_GATE_OP_SOFTMAX_COLUMNS:
        ETM_OMP(parallel for schedule(static) if ((long)n >= CPU_PAR_MIN))
        for (int e = 0; e < E; e++) {
            double dot = 0.0;
            for (int r = 0; r < N; r++) dot += (double)dout[(size_t)r * E + e] * out[(size_t)r * E + e];
            float fd = (float)dot;
            for (int r = 0; r < N; r++) {
                size_t i = (size_t)r * E + e;
                dx[i] += out[i] * (dout[i] - fd);
            }
        }
        break;
    }
}

void cpu_rows_dot(etm_backend *be, float *out, const float *a, const float *b, int N, int D) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * D >= CPU_PAR_MIN))
    for (int r = 0; r < N; r++) {
        const float *ar = a + (size_t)r * D, *br = b + (size_t)r * D;
        double s = 0.0;
        for (int d = 0; d < D; d++) s += (double)ar[d] * br[d];
        out[r] = (float)s;
    }
}
