/* cpu_routing.c: the CPU backend's routing decisions: top-k experts per token (token choice),
 * top tokens per expert within pools with optional thresholds and clamps (expert choice, expert
 * threshold, token-choice capacity), and the k-th largest score per column (the cut-offs that
 * expert-threshold routing averages into its thresholds).
 *
 * Scores are compared as cpu_float_key()s, a total order equal to the float order (NaN lowest),
 * and ties always go to the lower index, so every decision is exact and independent of the thread
 * count. Column selections find the k-th largest key by a radix select (linear time: four passes
 * of a 256-bucket histogram over shrinking candidate sets) rather than sorting. */
#include <config.h>

#include "cpu_internal.h"

#include <math.h>
#include <stdlib.h>

uint32_t cpu_kth_largest_key(uint32_t *keys, uint32_t *tmp, int n, int k) {
    uint32_t *cur = keys, *next = tmp;
    int count = n;
    for (int shift = 24; shift >= 0 && count > 1; shift -= 8) {
        int hist[256] = {0};
        for (int i = 0; i < count; i++) hist[(cur[i] >> shift) & 255u]++;
        int d = 255;
        for (; d > 0; d--) { /* the bucket holding the k-th largest, counting from the top */
            if (hist[d] >= k) break;
            k -= hist[d];
        }
        if (hist[d] == count) continue; /* every candidate is in it: nothing to filter */
        int kept = 0;
        for (int i = 0; i < count; i++)
            if (((cur[i] >> shift) & 255u) == (uint32_t)d) next[kept++] = cur[i];
        uint32_t *t = cur;
        cur = next;
        next = t;
        count = kept;
    }
    /* the survivors all share the k-th key (count == 1, or all 32 bits were matched) */
    return cur[0];
}

/* Does (key a, index ia) come before (key b, index ib)? Larger key first, then lower index. */
static int ranks_before(uint32_t a, int ia, uint32_t b, int ib) {
    return a > b || (a == b && ia < ib);
}

void cpu_topk_rows(etm_backend *be, uint8_t *z, const float *score, int N, int E, int k) {
    (void)be;
    if (k > E) k = E;
    ETM_OMP(parallel) {
        uint32_t *top_key = etm_malloc((size_t)(k > 0 ? k : 1) * sizeof *top_key);
        int *top_idx = etm_malloc((size_t)(k > 0 ? k : 1) * sizeof *top_idx);
        ETM_OMP(for schedule(static))
        for (int n = 0; n < N; n++) {
            const float *s = score + (size_t)n * E;
            uint8_t *zr = z + (size_t)n * E;
            memset(zr, 0, (size_t)E);
            if (k <= 0) continue;
            /* insertion into a sorted list of the best k so far */
            int have = 0;
            for (int e = 0; e < E; e++) {
                uint32_t key = cpu_float_key(s[e]);
                if (have == k && !ranks_before(key, e, top_key[k - 1], top_idx[k - 1])) continue;
                int pos = have < k ? have++ : k - 1;
                while (pos > 0 && ranks_before(key, e, top_key[pos - 1], top_idx[pos - 1])) {
                    top_key[pos] = top_key[pos - 1];
                    top_idx[pos] = top_idx[pos - 1];
                    pos--;
                }
                top_key[pos] = key;
                top_idx[pos] = e;
            }
            for (int i = 0; i < have; i++) zr[top_idx[i]] = 1;
        }
        free(top_key);
        free(top_idx);
    }
}

/* Per-thread buffers for one column of a pool. */
typedef struct {
    uint32_t *keys, *work, *tmp; /* (pool_rows) candidate keys, and two scratch copies */
    int *rows;                   /* (pool_rows) pool row of each candidate */
} column_scratch;

static void scratch_init(column_scratch *c, int rows) {
    size_t n = (size_t)(rows > 0 ? rows : 1);
    c->keys = etm_malloc(n * sizeof *c->keys);
    c->work = etm_malloc(n * sizeof *c->work);
    c->tmp = etm_malloc(n * sizeof *c->tmp);
    c->rows = etm_malloc(n * sizeof *c->rows);
}

static void scratch_free(column_scratch *c) {
    free(c->keys);
    free(c->work);
    free(c->tmp);
    free(c->rows);
}

void cpu_select_columns(etm_backend *be, uint8_t *z, const float *score, const uint8_t *eligible,
                        const float *threshold, int N, int E, int pool_rows, int lo, int hi) {
    (void)be;
    memset(z, 0, (size_t)N * E);
    if (pool_rows <= 0 || N <= 0 || E <= 0) return;
    long tasks = (long)(N / pool_rows) * E;
    ETM_OMP(parallel) {
        column_scratch c;
        scratch_init(&c, pool_rows);
        ETM_OMP(for schedule(dynamic, 1))
        for (long task = 0; task < tasks; task++) {
            int e = (int)(task % E), p = (int)(task / E);
            int n_cand = 0, n_above = 0;
            for (int r = 0; r < pool_rows; r++) {
                size_t at = ((size_t)p * pool_rows + r) * E + e;
                if (eligible && !eligible[at]) continue;
                float s = score[at];
                if (threshold && s >= threshold[e]) n_above++;
                c.keys[n_cand] = cpu_float_key(s);
                c.rows[n_cand++] = r;
            }
            /* clamp(n_above, lo, hi): hi is the hard cap; never more than the candidates */
            int take = n_above < lo ? lo : n_above;
            if (take > hi) take = hi;
            if (take > n_cand) take = n_cand;
            if (take <= 0) continue;
            uint8_t *zc = z + (size_t)p * pool_rows * E + e;
            if (take == n_cand) {
                for (int i = 0; i < n_cand; i++) zc[(size_t)c.rows[i] * E] = 1;
                continue;
            }
            memcpy(c.work, c.keys, (size_t)n_cand * sizeof *c.work);
            uint32_t cut = cpu_kth_largest_key(c.work, c.tmp, n_cand, take);
            int above = 0;
            for (int i = 0; i < n_cand; i++) above += c.keys[i] > cut;
            int ties = take - above; /* how many of the keys equal to the cut, lowest rows first */
            for (int i = 0; i < n_cand; i++) {
                if (c.keys[i] > cut || (c.keys[i] == cut && ties-- > 0))
                    zc[(size_t)c.rows[i] * E] = 1;
            }
        }
        scratch_free(&c);
    }
}

void cpu_kth_largest_columns(etm_backend *be, float *out, const float *score, int N, int E,
                             int pool_rows, int k) {
    (void)be;
    if (pool_rows <= 0 || N <= 0 || E <= 0) return;
    long tasks = (long)(N / pool_rows) * E;
    ETM_OMP(parallel) {
        column_scratch c;
        scratch_init(&c, pool_rows);
        ETM_OMP(for schedule(dynamic, 1))
        for (long task = 0; task < tasks; task++) {
            int e = (int)(task % E), p = (int)(task / E);
            /* no k-th largest: k below 1 admits nothing, k past the pool admits everything */
            if (k < 1 || k > pool_rows) {
                out[task] = k < 1 ? INFINITY : -INFINITY;
                continue;
            }
            const float *col = score + (size_t)p * pool_rows * E + e;
            for (int r = 0; r < pool_rows; r++) c.keys[r] = cpu_float_key(col[(size_t)r * E]);
            out[task] = cpu_key_float(cpu_kth_largest_key(c.keys, c.tmp, pool_rows, k));
        }
        scratch_free(&c);
    }
}
