/* sample.c: sampling the next token from logits: greedy, or softmax(logits / T) over the top k
 * (see generate.h). */
#include <config.h>

#include "generate.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- sampling ------------------------------------------------------------------------------ */

int etm_sampling_check(const etm_sampling *s, etm_error *err) {
    if (!(s->temperature >= 0.0f) || isinf(s->temperature))
        return etm_fail(err, "temperature must be a finite number >= 0 (got %g)", (double)s->temperature);
    if (s->top_k < 0) return etm_fail(err, "top-k must be >= 0 (got %d; 0 means no limit)", s->top_k);
    return 0;
}

/* NaN ranks below every number, -inf included, so it is never preferred. */
static double rank_key(float x) { return isnan(x) ? -INFINITY : (double)x; }

/* qsort has no context argument: the keys travel with the indices. */
typedef struct {
    double key;
    int32_t id;
} ranked;

static int by_key_desc_then_id(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->key != b->key) return a->key > b->key ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

int32_t etm_sample(const float *logits, int n, const etm_sampling *s, etm_rng *rng) {
    if (n <= 1) return 0;
    if (s->temperature == 0.0f) {
        int32_t best = 0;
        double bv = rank_key(logits[0]);
        for (int i = 1; i < n; i++)
            if (rank_key(logits[i]) > bv) { /* strictly greater: ties stay with the lower id */
                bv = rank_key(logits[i]);
                best = i;
            }
        return best;
    }
    /* candidates: everything, or the top_k by (logit desc, id asc) */
    uint8_t *chosen = etm_malloc((size_t)n);
    int k = s->top_k;
    if (k <= 0 || k >= n) {
        memset(chosen, 1, (size_t)n);
    } else {
        ranked *r = etm_malloc((size_t)n * sizeof *r);
        for (int i = 0; i < n; i++) {
            r[i].key = rank_key(logits[i]);
            r[i].id = i;
        }
        qsort(r, (size_t)n, sizeof *r, by_key_desc_then_id);
        memset(chosen, 0, (size_t)n);
        for (int i = 0; i < k; i++) chosen[r[i].id] = 1;
        free(r);
    }
    double max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (chosen[i] && rank_key(logits[i]) > max) max = rank_key(logits[i]);
    if (max == -INFINITY) {
        free(chosen);
        return 0;
    }
    double *w = etm_malloc((size_t)n * sizeof *w), sum = 0.0;
    for (int i = 0; i < n; i++) {
        double key = rank_key(logits[i]);
        w[i] = chosen[i] && key > -INFINITY ? exp((key - max) / (double)s->temperature) : 0.0;
        sum += w[i];
    }
    double u = (double)(etm_rng_next(rng) >> 11) * 0x1p-53; /* [0, 1), 53 bits */
    double target = u * sum, cum = 0.0;
    int32_t pick = -1, last = 0;
    for (int i = 0; i < n && pick < 0; i++) {
        if (w[i] <= 0.0) continue;
        last = i;
        cum += w[i];
        if (target < cum) pick = i;
    }
    free(w);
    free(chosen);
    return pick >= 0 ? pick : last; /* rounding can leave target == sum: the last candidate */
}
