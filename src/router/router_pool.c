/* router_pool.c: expert choice over the whole step's pooled logits (router_pool.h): the pooled
 * host logits go to the backend, its select_columns picks each column's top k_target over one
 * pool of all the rows (the same rule and ties as a micro-batch's pools), and the mask comes
 * back. */
#include "router_pool.h"

#include "router.h"

#include <limits.h>
#include <stdlib.h>

struct etm_ec_pool {
    etm_backend *be;
    etm_hparams hp;  /* the run's: E, top_k for etm_router_sizes */
    int E;
    size_t cap;      /* rows the buffers hold */
    float *logits;   /* (cap, E) backend */
    uint8_t *mask;   /* (cap, E) backend */
};

etm_ec_pool *etm_ec_pool_create(etm_backend *be, const etm_hparams *hp) {
    etm_ec_pool *p = etm_calloc(1, sizeof(*p));
    p->be = be;
    p->hp = *hp;
    p->E = hp->n_routed;
    return p;
}

void etm_ec_pool_free(etm_ec_pool *p) {
    if (!p) return;
    if (p->logits) p->be->free(p->be, p->logits);
    if (p->mask) p->be->free(p->be, p->mask);
    free(p);
}

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
    /* one pool of all the rows: router.h's k_target of the whole batch (pool_seqs is 0 here) */
    int kt = etm_router_sizes(&p->hp, n).k_batch;
    be->upload(be, p->logits, logits, rows * E * sizeof(float));
    be->select_columns(be, p->mask, p->logits, NULL, NULL, n, p->E, n, kt, kt);
    be->download(be, mask, p->mask, rows * E);
    return 0;
}
