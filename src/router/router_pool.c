/* router_pool.c: expert choice over the whole step's pooled logits (router_pool.h): the pooled
 * host logits go to the backend, its select_columns picks each column's top k_target over one
 * pool of all the rows (the same rule and ties as a micro-batch's pools), and the mask comes
 * back. */
#include "router_pool.h"

#include <limits.h>
#include <stdlib.h>

struct etm_ec_pool {
    etm_backend *be;
    int E, top_k;
    size_t cap;      /* rows the buffers hold */
    float *logits;   /* (cap, E) backend */
    uint8_t *mask;   /* (cap, E) backend */
};

etm_ec_pool *etm_ec_pool_create(etm_backend *be, const etm_hparams *hp) {
    etm_ec_pool *p = etm_calloc(1, sizeof(*p));
    p->be = be;
    p->E = hp->n_routed;
    p->top_k = hp->top_k;
    return p;
}

void etm_ec_pool_free(etm_ec_pool *p) {
    if (!p) return;
    if (p->logits) p->be->free(p->be, p->logits);
    if (p->mask) p->be->free(p->be, p->mask);
    free(p);
}

static int k_target_of(size_t rows, int top_k, int E) {
    /* in 64 bits: rows x top_k may pass INT_MAX before the division */
    long long k = (long long)rows * top_k / E;
    if (k < 1) k = 1;
    if (k > (long long)rows) k = (long long)rows;
    return (int)k;
}

int etm_ec_pool_k_target(const etm_hparams *hp, size_t rows) { return k_target_of(rows, hp->top_k, hp->n_routed); }

int etm_ec_pool_select(etm_ec_pool *p, const float *logits, size_t rows, uint8_t *mask, etm_error *err) {
    etm_backend *be = p->be;
    size_t E = (size_t)p->E;
    if (rows < 1 || rows > (size_t)INT_MAX / E)
        return etm_fail(err, "ec_pool_scope = step: a pool of %zu tokens x %zu experts is too large", rows, E);
    if (rows > p->cap) {
        if (p->logits) be->free(be, p->logits);
        if (p->mask) be->free(be, p->mask);
        p->logits = be->alloc(be, rows * E * sizeof(float));
        p->mask = be->alloc(be, rows * E);
        p->cap = rows;
    }
    int n = (int)rows;
    int kt = k_target_of(rows, p->top_k, p->E);
    be->upload(be, p->logits, logits, rows * E * sizeof(float));
    be->select_columns(be, p->mask, p->logits, NULL, NULL, n, p->E, n, kt, kt);
    be->download(be, mask, p->mask, rows * E);
    return 0;
}
