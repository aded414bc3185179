/* model_decode.c: one-token-at-a-time inference with a key/value cache. Each step runs the same
 * backend operations as the training forward on a single row, attending over the cached keys
 * and values of the earlier positions. MoE layers use one-token copies of the model's layers
 * (the training layers keep their activations for backward), loaded with the model's router
 * state at every step and run in ETM_MOE_EVAL mode. */
#include <config.h>

#include <stdlib.h>
#include <string.h>

#include "model.h"

struct etm_kv_cache {
    etm_backend *be;        /* the model's backend (not owned) */
    int n_layer;            /* L */
    int max_len;            /* positions the cache holds */
    int len;                /* positions filled */
    float *k;               /* (L, max_len, Hkv, hd) after RoPE and QK-norm */
    float *v;               /* (L, max_len, Hkv, hd) */
    etm_moe_layer **moe;    /* host (L) one-token MoE layers; NULL for dense layers */
    float *mem;             /* block holding the one-token scratch below */
    float *tmp;             /* (D) raw embedding */
    float *x;               /* (D) residual stream */
    float *ln;              /* (D) norm output */
    float *rstd;            /* (H) */
    float *q;               /* (H*hd) before QK-norm */
    float *qn;              /* (H*hd) after QK-norm */
    float *knew;            /* (Hkv*hd) before QK-norm */
    float *att;             /* (H*hd) */
    float *lse;             /* (H) */
    float *h;               /* (F) */
    float *a;               /* (F) */
    float *y;               /* (D) MoE output */
    float *logits;          /* (V) raw */
    float *capped;          /* (V) soft-capped */
    int32_t *token;         /* (1) */
    float *host_logits;     /* host (V) */
};

etm_kv_cache *etm_kv_cache_create(etm_model *m, int max_len, etm_error *err) {
    const etm_hparams *hp = &m->hp;
    if (max_len < 1 || max_len > hp->seq_len) {
        etm_fail(err, "kv cache: max_len %d outside 1..%d (RoPE tables cover seq_len)", max_len, hp->seq_len);
        return NULL;
    }
    etm_backend *be = m->be;
    size_t D = hp->d_model, hd = etm_head_dim(hp), H = hp->n_head, Hkv = hp->n_kv_head;
    size_t F = hp->ffn_hidden > 0 ? hp->ffn_hidden : 1, V = hp->vocab_size, L = hp->n_layer;
    etm_kv_cache *c = etm_calloc(1, sizeof *c);
    c->be = be;
    c->n_layer = hp->n_layer;
    c->max_len = max_len;
    size_t kv = L * max_len * Hkv * hd;
    c->k = be->alloc(be, kv * sizeof(float));
    c->v = be->alloc(be, kv * sizeof(float));
    c->moe = etm_calloc(L, sizeof(etm_moe_layer *));
    etm_hparams one = *hp;
    one.seq_len = 1; /* a single token per call */
    for (size_t l = 0; l < L; l++) {
        if (!m->moe[l]) continue;
        c->moe[l] = etm_moe_create(be, &one, 1);
        if (!c->moe[l]) {
            etm_fail(err, "kv cache: could not build the one-token MoE layer %zu", l);
            etm_kv_cache_free(c);
            return NULL;
        }
    }
    size_t sizes[] = {D, D, D, H, H * hd, H * hd, Hkv * hd, H * hd, H, F, F, D, V, V};
    float **slots[] = {&c->tmp, &c->x, &c->ln, &c->rstd, &c->q, &c->qn, &c->knew, &c->att, &c->lse,
                       &c->h, &c->a, &c->y, &c->logits, &c->capped};
    size_t total = 0;
    for (size_t i = 0; i < ETM_ARRAY_LEN(sizes); i++) total += (sizes[i] + 15) & ~(size_t)15;
    c->mem = be->alloc(be, total * sizeof(float));
    size_t off = 0;
    for (size_t i = 0; i < ETM_ARRAY_LEN(sizes); i++) {
        *slots[i] = c->mem + off;
        off += (sizes[i] + 15) & ~(size_t)15;
    }
    c->token = be->alloc(be, sizeof(int32_t));
    c->host_logits = etm_calloc(V, sizeof(float));
    return c;
}

void etm_kv_cache_free(etm_kv_cache *c) {
    if (!c) return;
    etm_backend *be = c->be;
    if (c->moe)
        for (int l = 0; l < c->n_layer; l++) etm_moe_free(c->moe[l]);
    free(c->moe);
    if (c->k) be->free(be, c->k);
    if (c->v) be->free(be, c->v);
    if (c->mem) be->free(be, c->mem);
    if (c->token) be->free(be, c->token);
    free(c->host_logits);
    free(c);
}

const float *etm_model_decode(etm_model *m, etm_kv_cache *c, int32_t token, int pos, etm_error *err) {
    const etm_hparams *hp = &m->hp;
    etm_backend *be = m->be;
    int V = hp->vocab_size, D = hp->d_model, hd = etm_head_dim(hp);
    int H = hp->n_head, Hkv = hp->n_kv_head, HD = H * hd, KVD = Hkv * hd, F = hp->ffn_hidden;
    float eps = hp->norm_eps;
    if (c->be != be || c->n_layer != hp->n_layer) {
        etm_fail(err, "decode: the cache was built for another model");
        return NULL;
    }
    if (pos < 0 || pos > c->len || pos >= c->max_len) {
        etm_fail(err, "decode: position %d outside 0..%d (cache holds %d of %d positions)", pos,
                 ETM_MIN(c->len, c->max_len - 1), c->len, c->max_len);
        return NULL;
    }
    if (token < 0 || token >= V) {
        etm_fail(err, "decode: token %d at position %d outside 0..%d", (int)token, pos, V - 1);
        return NULL;
    }
    be->upload(be, c->token, &token, sizeof token);
    be->embedding_forward(be, c->tmp, m->w.wte, c->token, 1, D);
    be->rmsnorm_forward(be, c->x, c->rstd, c->tmp, 1, D, eps);
    for (int l = 0; l < hp->n_layer; l++) {
        const etm_layer_weights *w = &m->w.layers[l];
        float *kl = c->k + (size_t)l * c->max_len * KVD, *vl = c->v + (size_t)l * c->max_len * KVD;
        be->rmsnorm_forward(be, c->ln, c->rstd, c->x, 1, D, eps);
        be->gemm(be, ETM_NO_TRANS, ETM_TRANS, 1, HD, D, 1.0f, c->ln, D, w->wq, D, 0.0f, c->q, HD);
        be->rope_forward(be, c->q, m->rope_cos, m->rope_sin, 1, 1, H, hd, pos);
        be->rmsnorm_forward(be, c->qn, c->rstd, c->q, H, hd, eps);
        be->gemm(be, ETM_NO_TRANS, ETM_TRANS, 1, KVD, D, 1.0f, c->ln, D, w->wk, D, 0.0f, c->knew, KVD);
        be->rope_forward(be, c->knew, m->rope_cos, m->rope_sin, 1, 1, Hkv, hd, pos);
        be->rmsnorm_forward(be, kl + (size_t)pos * KVD, c->rstd, c->knew, Hkv, hd, eps);
        be->gemm(be, ETM_NO_TRANS, ETM_TRANS, 1, KVD, D, 1.0f, c->ln, D, w->wv, D, 0.0f, vl + (size_t)pos * KVD,
                 KVD);
        be->attention_forward(be, c->att, c->lse, c->qn, kl, vl, 1, 1, pos + 1, H, Hkv, hd);
        be->gemm(be, ETM_NO_TRANS, ETM_TRANS, 1, D, HD, 1.0f, c->att, HD, w->wo, HD, 1.0f, c->x, D);
        be->rmsnorm_forward(be, c->ln, c->rstd, c->x, 1, D, eps);
        if (c->moe[l]) {
            etm_router_state st;
            etm_moe_get_state(m->moe[l], &st);
            etm_moe_set_state(c->moe[l], st.threshold, st.ema, st.bias, st.counters);
            etm_moe_forward(c->moe[l], &w->moe, c->ln, c->y, 1, ETM_MOE_EVAL);
            be->axpy(be, c->x, 1.0f, c->y, (size_t)D);
        } else {
            be->gemm(be, ETM_NO_TRANS, ETM_TRANS, 1, F, D, 1.0f, c->ln, D, w->mlp_up, D, 0.0f, c->h, F);
            be->relu2_forward(be, c->a, c->h, (size_t)F);
            be->gemm(be, ETM_NO_TRANS, ETM_TRANS, 1, D, F, 1.0f, c->a, F, w->mlp_down, F, 1.0f, c->x, D);
        }
    }
    be->rmsnorm_forward(be, c->ln, c->rstd, c->x, 1, D, eps);
    be->gemm(be, ETM_NO_TRANS, ETM_TRANS, 1, V, D, 1.0f, c->ln, D, m->w.lm_head, D, 0.0f, c->logits, V);
    be->softcap(be, c->capped, c->logits, (size_t)V, hp->logit_cap);
    be->download(be, c->host_logits, c->capped, (size_t)V * sizeof(float));
    c->len = pos + 1;
    return c->host_logits;
}

const etm_moe_layer *etm_kv_cache_moe(const etm_kv_cache *c, int layer) {
    return layer >= 0 && layer < c->n_layer ? c->moe[layer] : NULL;
}
