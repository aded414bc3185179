/* cpu_softmax.c: the CPU backend's per-row softmax family: softmax of router scores and its
 * backward, log-sum-exp of rows, and the soft-capped cross-entropy of the LM head (forward and
 * gradient).
 *
 * Each row belongs to one thread. Exponentials and tanh come from cpu_math.h in vectorised loops
 * (every element computed the same way on any path); sums of a row run in double over eight
 * fixed lanes (cpu_sum), so results do not depend on the thread count. */
#include <config.h>

#include "cpu_internal.h"
#include "cpu_math.h"

#include <math.h>
#include <stdlib.h>

void cpu_softmax_forward(etm_backend *be, float *out, const float *x, int N, int E) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)N * E >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * E;
        float *o = out + (size_t)n * E;
        float inv = (float)(1.0 / cpu_vexp_sum(o, xr, cpu_vmax(xr, E), E));
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
    ETM_OMP(parallel if ((long)N * E >= CPU_PAR_MIN)) {
        float *e = etm_malloc((size_t)(E > 0 ? E : 1) * sizeof *e);
        ETM_OMP(for schedule(static))
        for (int n = 0; n < N; n++) {
            const float *xr = x + (size_t)n * E;
            float m = cpu_vmax(xr, E);
            out[n] = m + (float)log(cpu_vexp_sum(e, xr, m, E));
        }
        free(e);
    }
}

/* z = cap tanh(logits / cap) (cap <= 0: z = logits); returns max z. */
static float capped_row(float *z, const float *logits, int V, float cap) {
    if (cap > 0.0f)
        cpu_vsoftcap(z, logits, cap, V);
    else
        memcpy(z, logits, (size_t)V * sizeof *z);
    return cpu_vmax(z, V);
}

/* Scratch of one thread for a row of V logits. */
typedef struct {
    float *z, *e; /* (V) capped logits, their exponentials */
} xent_scratch;

void cpu_xent_forward(etm_backend *be, float *losses, const float *logits, const int32_t *targets,
                      int N, int V, float cap) {
    (void)be;
    ETM_OMP(parallel if ((long)N * V >= CPU_PAR_MIN)) {
        xent_scratch s = {etm_malloc((size_t)V * sizeof(float)),
                          etm_malloc((size_t)V * sizeof(float))};
        ETM_OMP(for schedule(static))
        for (int n = 0; n < N; n++) {
            int32_t t = targets[n];
            if (t < 0 ||
                t >= V) { /* ignored; a target past the vocabulary is a bug: make it loud */
                losses[n] = t < 0 ? 0.0f : NAN;
                continue;
            }
            float m = capped_row(s.z, logits + (size_t)n * V, V, cap);
            losses[n] = (float)((double)m + log(cpu_vexp_sum(s.e, s.z, m, V)) - (double)s.z[t]);
        }
        free(s.z);
        free(s.e);
    }
}

void cpu_xent_backward(etm_backend *be, float *dlogits, const float *logits, const int32_t *targets,
                       int N, int V, float cap, float dloss) {
    (void)be;
    ETM_OMP(parallel if ((long)N * V >= CPU_PAR_MIN)) {
        float *z = etm_malloc((size_t)V * sizeof *z);
        ETM_OMP(for schedule(static))
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
            /* d holds exp(z - m), then the gradient dloss (p - onehot) dz/dlogit */
            float m = capped_row(z, logits + (size_t)n * V, V, cap);
            float inv = (float)(1.0 / cpu_vexp_sum(d, z, m, V));
            float dt = d[t] * inv - 1.0f, th = cap > 0.0f ? z[t] * (1.0f / cap) : 0.0f;
            cpu_vxent_grad(d, z, inv, cap, dloss, V);
            d[t] = dloss * dt * (1.0f - th * th); /* the target's -1 */
        }
        free(z);
    }
}
