/* cpu_softmax.c: the CPU backend's per-row softmax family: softmax of router scores and its
 * backward, log-sum-exp of rows, and the soft-capped cross-entropy of the LM head (forward and
 * gradient).
 *
 * Each row belongs to one thread; its maximum and its sum of exponentials (in double) run in
 * index order, so results do not depend on the thread count. */
#include <config.h>

#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>

static float row_max(const float *x, int E) {
    float m = -INFINITY;
    for (int e = 0; e < E; e++) m = x[e] > m ? x[e] : m;
    return m;
}

void cpu_softmax_forward(etm_backend *be, float *out, const float *x, int N, int E) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * E >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * E;
        float *o = out + (size_t)n * E;
        float m = row_max(xr, E);
        double sum = 0.0;
        for (int e = 0; e < E; e++) {
            o[e] = expf(xr[e] - m);
            sum += o[e];
        }
        float inv = (float)(1.0 / sum);
        for (int e = 0; e < E; e++) o[e] *= inv;
    }
}

void cpu_softmax_backward(etm_backend *be, float *dx, const float *dout, const float *out, int N,
                          int E) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * E >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        const float *g = dout + (size_t)n * E, *o = out + (size_t)n * E;
        float *d = dx + (size_t)n * E;
        double dot = 0.0;
        for (int e = 0; e < E; e++) dot += (double)g[e] * o[e];
        float fd = (float)dot;
        for (int e = 0; e < E; e++) d[e] += o[e] * (g[e] - fd);
    }
}

void cpu_logsumexp_rows(etm_backend *be, float *out, const float *x, int N, int E) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * E >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * E;
        float m = row_max(xr, E);
        double sum = 0.0;
        for (int e = 0; e < E; e++) sum += expf(xr[e] - m);
        out[n] = m + (float)log(sum);
    }
}

/* Soft-capped logits of one row into z (cap <= 0: no cap), returning their maximum. */
static float capped_row(float *z, const float *logits, int V, float cap) {
    float m = -INFINITY;
    for (int j = 0; j < V; j++) {
        float v = cap > 0.0f ? cpu_softcap1(logits[j], cap) : logits[j];
        z[j] = v;
        m = v > m ? v : m;
    }
    return m;
}

/* log sum exp of z[0..V) given its maximum m; e (if non-NULL) gets exp(z - m). */
static double row_lse(float *e, const float *z, int V, float m) {
    double sum = 0.0;
    for (int j = 0; j < V; j++) {
        float ej = expf(z[j] - m);
        if (e) e[j] = ej;
        sum += ej;
    }
    return (double)m + log(sum);
}

void cpu_xent_forward(etm_backend *be, float *losses, const float *logits, const int32_t *targets,
                      int N, int V, float cap) {
    (void)be;
    ETM_OMP(parallel)
    {
        float *z = etm_malloc((size_t)V * sizeof *z);
        ETM_OMP(for schedule(static))
        for (int n = 0; n < N; n++) {
            int32_t t = targets[n];
            if (t < 0 || t >= V) { /* ignored; a target past the vocabulary is a bug: make it loud */
                losses[n] = t < 0 ? 0.0f : NAN;
                continue;
            }
            float m = capped_row(z, logits + (size_t)n * V, V, cap);
            losses[n] = (float)(row_lse(NULL, z, V, m) - (double)z[t]);
        }
        free(z);
    }
}

void cpu_xent_backward(etm_backend *be, float *dlogits, const float *logits,
                       const int32_t *targets, int N, int V, float cap, float dloss) {
    (void)be;
    ETM_OMP(parallel for schedule(static))
    for (int n = 0; n < N; n++) {
        float *d = dlogits + (size_t)n * V;
        int32_t t = targets[n];
        if (t < 0) {
            memset(d, 0, (size_t)V * sizeof *d);
            continue;
        }
        if (t >= V) { /* a bug upstream: poison the gradient rather than hide it */
            for (int j = 0; j < V; j++) d[j] = NAN;
            continue;
        }
        /* d holds z, then exp(z - m), then the gradient */
        float m = capped_row(d, logits + (size_t)n * V, V, cap);
        float lse = (float)row_lse(NULL, d, V, m);
        for (int j = 0; j < V; j++) {
            float zj = d[j], p = expf(zj - lse);
            float g = p - (j == t ? 1.0f : 0.0f);
            if (cap > 0.0f) {
                float th = zj / cap;
                g *= 1.0f - th * th; /* d z / d logit = 1 - tanh^2 */
            }
            d[j] = dloss * g;
        }
    }
}
