/* generate.c: the KV-cache generation loop (see generate.h); sampling is sample.c, the expert
 * trace and its renderings generate_show.c. */
#include <config.h>

#include "generate.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- generation ---------------------------------------------------------------------------- */

int etm_gen_moe_layers(const etm_model *m, int *layers) {
    int n = 0;
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) layers[n++] = l;
    return n;
}

int etm_generate(etm_model *m, const etm_gen_options *o, etm_gen_result *res, etm_error *err) {
    const etm_hparams *hp = &m->hp;
    int V = hp->vocab_size, T = hp->seq_len;
    res->n_generated = 0;
    res->end = ETM_GEN_LENGTH;
    if (etm_sampling_check(&o->sampling, err) != 0) return -1;
    if (o->n_prompt < 1) return etm_fail(err, "generate: the prompt is empty (at least one token is needed)");
    if (o->n_prompt > T)
        return etm_fail(err, "generate: the prompt has %d tokens but the model's context holds %d", o->n_prompt, T);
    if (o->max_new < 0) return etm_fail(err, "generate: max_new must be >= 0 (got %d)", o->max_new);
    if (o->n_vocab < 0 || o->n_vocab > V)
        return etm_fail(err, "generate: n_vocab %d outside 0..%d (the model's vocabulary)", o->n_vocab, V);
    for (int i = 0; i < o->n_prompt; i++)
        if (o->prompt[i] < 0 || o->prompt[i] >= V)
            return etm_fail(err, "generate: prompt token %d at position %d outside 0..%d", (int)o->prompt[i], i, V - 1);
    int n_vocab = o->n_vocab > 0 ? o->n_vocab : V;
    long want = (long)o->n_prompt + o->max_new;
    int len = want < T ? (int)want : T;

    etm_kv_cache *c = etm_kv_cache_create(m, len, err);
    if (!c) return -1;
    int *layers = etm_malloc((size_t)hp->n_layer * sizeof(int));
    int n_moe = etm_gen_moe_layers(m, layers);
    int *experts = etm_calloc((size_t)(n_moe > 0 ? n_moe : 1), sizeof(int));
    etm_rng rng;
    etm_rng_seed(&rng, o->seed);

    int rc = 0, pos = 0;
    const float *logits = NULL;
    for (;;) {
        int generated = pos >= o->n_prompt;
        int32_t token;
        if (!generated) {
            token = o->prompt[pos];
        } else {
            if (res->n_generated >= o->max_new) {
                res->end = ETM_GEN_LENGTH;
                break;
            }
            if (pos >= len) {
                res->end = ETM_GEN_CONTEXT;
                break;
            }
            int bad = -1; /* a NaN or infinite logit: sampling would pick garbage and print it as text */
            for (int i = 0; i < n_vocab && bad < 0; i++)
                if (!isfinite(logits[i])) bad = i;
            if (bad >= 0) {
                rc = etm_fail(err, "the model's logit for token %d at position %d is %s: the weights or the "
                              "routing produce non-finite values", bad, pos, isnan(logits[bad]) ? "NaN" : "infinite");
                break;
            }
            token = etm_sample(logits, n_vocab, &o->sampling, &rng);
            if (token == o->stop_token) {
                res->end = ETM_GEN_STOP_TOKEN;
                break;
            }
        }
        logits = etm_model_decode(m, c, token, pos, err);
        if (!logits) {
            rc = -1;
            break;
        }
        for (int j = 0; j < n_moe; j++) experts[j] = etm_moe_last_stats(etm_kv_cache_moe(c, layers[j]))->n_pairs;
        res->n_generated += generated;
        etm_gen_event ev = {pos, token, generated, experts, n_moe, logits};
        pos++;
        if (o->on_token && o->on_token(o->ctx, &ev) != 0) {
            res->end = ETM_GEN_CALLBACK;
            break;
        }
    }
    free(experts);
    free(layers);
    etm_kv_cache_free(c);
    return rc;
}
