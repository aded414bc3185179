/* inspect.c: routing statistics of a model over token batches, for `etmoe inspect` (dump.h). */
#include <config.h>

#include "dump.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "router.h"
#include "safetensors.h"

/* ---- routing statistics (inspect) ---------------------------------------------------------- */
etm_inspect *etm_inspect_create(const etm_model *m) {
    etm_inspect *s = etm_calloc(1, sizeof *s);
    s->E = m->hp.n_routed;
    s->V = m->hp.vocab_size;
    for (int l = 0; l < m->hp.n_layer; l++) s->n_layers += m->moe[l] != NULL;
    s->layers = etm_calloc((size_t)ETM_MAX(s->n_layers, 1), sizeof(etm_inspect_layer));
    for (int l = 0, li = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_inspect_layer *il = &s->layers[li++];
        il->layer = l;
        il->load = etm_calloc((size_t)s->E, sizeof(int64_t));
        il->hist = etm_calloc((size_t)s->E + 1, sizeof(int64_t));
    }
    s->token_count = etm_calloc((size_t)s->V, sizeof(int64_t));
    return s;
}

void etm_inspect_free(etm_inspect *s) {
    if (!s) return;
    for (int i = 0; i < s->n_layers; i++) {
        free(s->layers[i].load);
        free(s->layers[i].hist);
        free(s->layers[i].pair_keys);
    }
    free(s->layers);
    free(s->token_count);
    free(s);
}

int etm_inspect_add_batch(etm_inspect *s, etm_model *m, const int32_t *inputs,
                          const int32_t *targets, int B, etm_error *err) {
    int T = m->hp.seq_len, N = B * T, E = s->E;
    double loss;
    if (etm_model_forward(m, inputs, targets, B, T, ETM_MOE_EVAL, &loss, err) != 0) return -1;
    for (int n = 0; n < N; n++) s->token_count[inputs[n]]++;
    s->n_tokens += N;
    if (targets)
        for (int n = 0; n < N; n++)
            if (targets[n] >= 0) {
                s->loss_sum += m->host_losses[n];
                s->n_valid++;
            }
    uint8_t *mask = etm_malloc((size_t)N * (size_t)E);
    for (int li = 0; li < s->n_layers; li++) {
        etm_inspect_layer *il = &s->layers[li];
        m->be->download(m->be, mask, etm_moe_mask(m->moe[il->layer]), (size_t)N * (size_t)E);
        for (int n = 0; n < N; n++) {
            int count = 0;
            for (int e = 0; e < E; e++) {
                if (!mask[(size_t)n * E + e]) continue;
                count++;
                il->load[e]++;
                if (il->n_keys == il->cap_keys) {
                    il->cap_keys = il->cap_keys ? il->cap_keys * 2 : 1024;
                    il->pair_keys = etm_realloc(il->pair_keys, il->cap_keys * sizeof(uint64_t));
                }
                il->pair_keys[il->n_keys++] = (uint64_t)e * (uint64_t)s->V + (uint64_t)inputs[n];
            }
            il->hist[count]++;
            il->n_pairs += count;
        }
        etm_routing_summary_add(&il->summary, etm_moe_last_stats(m->moe[il->layer]), E);
        il->sorted = 0;
    }
    free(mask);
    return 0;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    int32_t token;
    int64_t count;
} token_count;

static int cmp_token_count(const void *a, const void *b) {
    const token_count *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return x->token < y->token ? -1 : x->token > y->token;
}

int etm_inspect_top_tokens(etm_inspect *s, int li, int e, int k, int32_t *tokens, int64_t *counts) {
    if (li < 0 || li >= s->n_layers || e < 0 || e >= s->E || k <= 0) return 0;
    etm_inspect_layer *il = &s->layers[li];
    if (!il->sorted) {
        qsort(il->pair_keys, il->n_keys, sizeof(uint64_t), cmp_u64);
        il->sorted = 1;
    }
    uint64_t lo_key = (uint64_t)e * (uint64_t)s->V, hi_key = lo_key + (uint64_t)s->V;
    size_t lo = 0, hi = il->n_keys;
    while (lo < hi) { /* first key >= lo_key */
        size_t mid = lo + (hi - lo) / 2;
        if (il->pair_keys[mid] < lo_key) lo = mid + 1; else hi = mid;
    }
    token_count *runs = NULL;
    size_t n_runs = 0, cap = 0;
    for (size_t i = lo; i < il->n_keys && il->pair_keys[i] < hi_key;) {
        size_t j = i;
        while (j < il->n_keys && il->pair_keys[j] == il->pair_keys[i]) j++;
        if (n_runs == cap) {
            cap = cap ? cap * 2 : 64;
            runs = etm_realloc(runs, cap * sizeof *runs);
        }
        runs[n_runs].token = (int32_t)(il->pair_keys[i] - lo_key);
        runs[n_runs].count = (int64_t)(j - i);
        n_runs++;
        i = j;
    }
    if (n_runs) qsort(runs, n_runs, sizeof *runs, cmp_token_count);
    int found = (int)ETM_MIN((size_t)k, n_runs);
    for (int i = 0; i < found; i++) {
        tokens[i] = runs[i].token;
        counts[i] = runs[i].count;
    }
    free(runs);
    return found;
}
