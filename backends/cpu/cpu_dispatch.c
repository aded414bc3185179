/* cpu_dispatch.c: the CPU backend's dropless dispatch: building the (token, expert) pair lists
 * from a routing mask (a counting sort by expert, tokens ascending, plus the per-token lists in
 * ascending expert order), and moving rows between tokens and pairs: gather, scatter-add, and
 * the gated combine with its backward.
 *
 * Scatters run over tokens, each adding its pairs in ascending expert order, so every output row
 * has one writer and one fixed order of additions. */
#include <config.h>

#include "cpu_internal.h"

#include <stdlib.h>

void cpu_dispatch_alloc(etm_backend *be, etm_dispatch *d, int N, int E) {
    memset(d, 0, sizeof *d);
    size_t pairs = (size_t)(N > 0 ? N : 0) * (size_t)(E > 0 ? E : 0);
    d->n_tokens = N;
    d->n_experts = E;
    d->expert_offsets = be->alloc(be, (size_t)(E + 1) * sizeof(int32_t));
    d->pair_token = be->alloc(be, pairs * sizeof(int32_t));
    d->pair_expert = be->alloc(be, pairs * sizeof(int32_t));
    d->token_offsets = be->alloc(be, (size_t)(N + 1) * sizeof(int32_t));
    d->token_pairs = be->alloc(be, pairs * sizeof(int32_t));
    d->host_expert_offsets = etm_calloc((size_t)E + 1, sizeof(int32_t));
}

void cpu_dispatch_free(etm_backend *be, etm_dispatch *d) {
    be->free(be, d->expert_offsets);
    be->free(be, d->pair_token);
    be->free(be, d->pair_expert);
    be->free(be, d->token_offsets);
    be->free(be, d->token_pairs);
    free(d->host_expert_offsets);
    memset(d, 0, sizeof *d);
}

#define DISPATCH_CHUNK 1024 /* tokens per chunk of the parallel counting sort */

void cpu_build_dispatch(etm_backend *be, etm_dispatch *d, const uint8_t *z, int N, int E) {
    (void)be;
    d->n_tokens = N;
    d->n_experts = E;
    int chunks = (N + DISPATCH_CHUNK - 1) / DISPATCH_CHUNK;
    /* count[c * E + e]: ones of expert e in chunk c; later the first pair slot of (c, e) */
    int32_t *count = etm_calloc((size_t)(chunks > 0 ? chunks : 1) * E, sizeof *count);
    ETM_OMP(parallel for schedule(static) if (chunks > 1))
    for (int c = 0; c < chunks; c++) {
        int32_t *cnt = count + (size_t)c * E;
        int n1 = ETM_MIN(N, (c + 1) * DISPATCH_CHUNK);
        for (int n = c * DISPATCH_CHUNK; n < n1; n++) {
            const uint8_t *zr = z + (size_t)n * E;
            int32_t row = 0;
            for (int e = 0; e < E; e++) {
                int one = zr[e] != 0;
                cnt[e] += one;
                row += one;
            }
            d->token_offsets[n + 1] = row; /* a count for now, a prefix sum below */
        }
    }
    /* Prefix sums: experts in order, and within an expert the chunks in order. */
    int32_t total = 0;
    for (int e = 0; e < E; e++) {
        d->expert_offsets[e] = total;
        for (int c = 0; c < chunks; c++) {
            int32_t here = count[(size_t)c * E + e];
            count[(size_t)c * E + e] = total;
            total += here;
        }
    }
    d->expert_offsets[E] = total;
    d->n_pairs = total;
    d->token_offsets[0] = 0;
    for (int n = 0; n < N; n++) d->token_offsets[n + 1] += d->token_offsets[n];
    ETM_OMP(parallel for schedule(static) if (chunks > 1))
    for (int c = 0; c < chunks; c++) {
        int32_t *next = count + (size_t)c * E;
        int n1 = ETM_MIN(N, (c + 1) * DISPATCH_CHUNK);
        for (int n = c * DISPATCH_CHUNK; n < n1; n++) {
            const uint8_t *zr = z + (size_t)n * E;
            int32_t slot = d->token_offsets[n];
            for (int e = 0; e < E; e++) {
                if (!zr[e]) continue;
                int32_t p = next[e]++;
                d->pair_token[p] = n;
                d->pair_expert[p] = e;
                d->token_pairs[slot++] = p;
            }
        }
    }
    free(count);
    memcpy(d->host_expert_offsets, d->expert_offsets, (size_t)(E + 1) * sizeof(int32_t));
}

void cpu_gather_rows(etm_backend *be, float *dst, const float *src, const int32_t *pair_token,
                     int P, int D) {
    (void)be;
    ETM_OMP(parallel for schedule(static) if ((long)P * D >= CPU_PAR_MIN))
    for (int p = 0; p < P; p++)
        memcpy(dst + (size_t)p * D, src + (size_t)pair_token[p] * D, (size_t)D * sizeof *dst);
}

void cpu_scatter_add_rows(etm_backend *be, float *dst, const float *src, const etm_dispatch *d,
                          int D) {
    (void)be;
    int N = d->n_tokens;
    ETM_OMP(parallel for schedule(static) if ((long)d->n_pairs * D >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        float *y = dst + (size_t)n * D;
        for (int32_t j = d->token_offsets[n]; j < d->token_offsets[n + 1]; j++) {
            const float *s = src + (size_t)d->token_pairs[j] * D;
            for (int i = 0; i < D; i++) y[i] += s[i];
        }
    }
}

void cpu_gather_pairs(etm_backend *be, float *out, const float *x, const etm_dispatch *d) {
    (void)be;
    int P = d->n_pairs, E = d->n_experts;
    ETM_OMP(parallel for schedule(static) if (P >= CPU_PAR_MIN))
    for (int p = 0; p < P; p++) out[p] = x[(size_t)d->pair_token[p] * E + d->pair_expert[p]];
}

void cpu_scatter_add_pairs(etm_backend *be, float *dx, const float *dpair, const etm_dispatch *d) {
    (void)be;
    int P = d->n_pairs, E = d->n_experts;
    /* pairs are distinct (token, expert) cells: one writer each */
    ETM_OMP(parallel for schedule(static) if (P >= CPU_PAR_MIN))
    for (int p = 0; p < P; p++) dx[(size_t)d->pair_token[p] * E + d->pair_expert[p]] += dpair[p];
}

void cpu_combine_forward(etm_backend *be, float *y, const float *ye, const float *gate,
                         const etm_dispatch *d, int D) {
    (void)be;
    int N = d->n_tokens;
    ETM_OMP(parallel for schedule(static) if ((long)d->n_pairs * D >= CPU_PAR_MIN))
    for (int n = 0; n < N; n++) {
        float *yr = y + (size_t)n * D;
        for (int32_t j = d->token_offsets[n]; j < d->token_offsets[n + 1]; j++) {
            int32_t p = d->token_pairs[j];
            const float *s = ye + (size_t)p * D;
            float g = gate[p];
            for (int i = 0; i < D; i++) yr[i] += g * s[i];
        }
    }
}

void cpu_combine_backward(etm_backend *be, float *dye, float *dgate, const float *dy,
                          const float *ye, const float *gate, const etm_dispatch *d, int D) {
    (void)be;
    int P = d->n_pairs;
    ETM_OMP(parallel for schedule(static) if ((long)P * D >= CPU_PAR_MIN))
    for (int p = 0; p < P; p++) {
        const float *g = dy + (size_t)d->pair_token[p] * D, *e = ye + (size_t)p * D;
        float *o = dye + (size_t)p * D;
        float gp = gate[p];
        double dot = 0.0;
        for (int i = 0; i < D; i++) {
            o[i] = gp * g[i];
            dot += (double)g[i] * e[i];
        }
        dgate[p] = (float)dot;
    }
}
