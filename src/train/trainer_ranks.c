/* trainer_ranks.c: the micro-batch records the ranks gather each step and the ranks' agreement
 * checks (trainer_ranks.h). */
#include <config.h>

#include "trainer_ranks.h"

#include <stdlib.h>
#include <string.h>

#include "moe.h"

/* ---- the micro-batch records --------------------------------------------------------------- */

/* A record is [ce, then per MoE layer (layer order) the fields of etm_mb_layer_rec: aux, z,
 * tokens, pairs, no_expert, dropped, padded, load[E], router[E], has_router, then the MB_SUMMARY
 * values etm_routing_summary_add reads: hist[0..1], gate_sum, gate_sq, logit_sum, logit_sq,
 * cap_groups, cap_over, cap_under]. */
#define MB_SUMMARY 9
static int layer_rec_len(int E) { return 7 + 2 * E + 1 + MB_SUMMARY; }

/* Packs one layer's statistics st and its router's last step record (router; NULL: none) at dst;
 * returns the doubles written (layer_rec_len). */
static int layer_rec_pack(double *dst, const etm_moe_stats *st, const double *router, int E) {
    double *p = dst;
    *p++ = st->aux_loss;
    *p++ = st->z_loss;
    *p++ = st->n_tokens;
    *p++ = st->n_pairs;
    *p++ = st->tokens_no_expert;
    *p++ = st->dropped;
    *p++ = st->padded;
    for (int e = 0; e < E; e++) *p++ = st->expert_load[e];
    for (int e = 0; e < E; e++) *p++ = router ? router[e] : 0.0;
    *p++ = router != NULL;
    *p++ = st->experts_hist[0];
    *p++ = st->experts_hist[1];
    *p++ = st->gate_sum;
    *p++ = st->gate_sq;
    *p++ = st->logit_sum;
    *p++ = st->logit_sq;
    *p++ = st->cap_groups;
    *p++ = st->cap_over;
    *p++ = st->cap_under;
    return (int)(p - dst);
}

/* The inverse of layer_rec_pack; returns the doubles read. */
static int layer_rec_unpack(const double *src, int E, etm_mb_layer_rec *out) {
    const double *p = src;
    out->aux = *p++;
    out->z = *p++;
    out->tokens = (int64_t)*p++;
    out->pairs = (int64_t)*p++;
    out->no_expert = (int64_t)*p++;
    out->dropped = (int64_t)*p++;
    out->padded = (int64_t)*p++;
    out->load = p;
    p += E;
    out->router = p;
    p += E;
    out->has_router = *p++ != 0;
    out->hist[0] = (int)*p++;
    out->hist[1] = (int)*p++;
    out->gate_sum = *p++;
    out->gate_sq = *p++;
    out->logit_sum = *p++;
    out->logit_sq = *p++;
    out->cap_groups = (int)*p++;
    out->cap_over = (int)*p++;
    out->cap_under = (int)*p++;
    return (int)(p - src);
}

etm_mb_records *etm_mb_records_create(const etm_model *m, int local_accum, int world) {
    etm_mb_records *recs = etm_calloc(1, sizeof *recs);
    recs->E = m->hp.n_routed;
    recs->len = 1;
    for (int l = 0; l < m->hp.n_layer; l++)
        if (m->moe[l]) recs->len += layer_rec_len(recs->E);
    recs->local = local_accum;
    recs->total = local_accum * world;
    recs->mine = etm_malloc((size_t)recs->local * recs->len * sizeof(double));
    recs->all = etm_malloc((size_t)recs->total * recs->len * sizeof(double));
    recs->router_recs = etm_malloc(((size_t)recs->total * recs->E + 1) * sizeof(double));
    return recs;
}

void etm_mb_records_free(etm_mb_records *recs) {
    if (!recs) return;
    free(recs->mine);
    free(recs->all);
    free(recs->router_recs);
    free(recs->logits_all);
    free(recs);
}

void etm_mb_records_fill(etm_mb_records *recs, const etm_model *m, int a, double ce) {
    double *rec = recs->mine + (size_t)a * recs->len;
    int E = recs->E;
    *rec++ = ce;
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        const double *rr;
        int n = etm_router_step_records(etm_moe_router(m->moe[l]), &rr);
        /* a TRAIN forward adds at most one record, the last one; none for kinds without any */
        rec += layer_rec_pack(rec, etm_moe_last_stats(m->moe[l]), n > 0 ? rr + (size_t)(n - 1) * E : NULL, E);
    }
}

int etm_mb_records_gather(etm_mb_records *recs, etm_comm *comm, etm_error *err) {
    return comm->allgather(comm, recs->mine, (size_t)recs->local * recs->len * sizeof(double), recs->all, err);
}

double etm_mb_records_apply(etm_mb_records *recs, etm_model *m, etm_layer_acc *acc) {
    int E = recs->E, n = recs->total;
    double ce_sum = 0.0;
    for (int i = 0; i < n; i++) ce_sum += recs->all[(size_t)i * recs->len];
    int off = 1;
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_layer_acc *a = &acc[l];
        int nr = 0;
        for (int i = 0; i < n; i++) {
            etm_mb_layer_rec q;
            layer_rec_unpack(recs->all + (size_t)i * recs->len + off, E, &q);
            a->aux += q.aux;
            a->z += q.z;
            a->tokens += q.tokens;
            a->pairs += q.pairs;
            a->no_expert += q.no_expert;
            a->dropped += q.dropped;
            a->padded += q.padded;
            for (int e = 0; e < E; e++) a->load[e] += (int64_t)q.load[e];
            if (q.has_router) memcpy(recs->router_recs + (size_t)nr++ * E, q.router, (size_t)E * sizeof(double));
            /* the statistics etm_routing_summary_add reads (histogram entries 0 and 1 only) */
            etm_moe_stats st = {0};
            st.n_tokens = (int)q.tokens;
            st.n_pairs = (int)q.pairs;
            st.experts_hist = q.hist;
            st.gate_sum = q.gate_sum;
            st.gate_sq = q.gate_sq;
            st.logit_sum = q.logit_sum;
            st.logit_sq = q.logit_sq;
            st.cap_groups = q.cap_groups;
            st.cap_over = q.cap_over;
            st.cap_under = q.cap_under;
            etm_routing_summary_add(&a->summary, &st, E);
        }
        etm_router_set_step_records(etm_moe_router_mut(m->moe[l]), recs->router_recs, nr);
        off += layer_rec_len(E);
    }
    return ce_sum;
}

int etm_mb_records_gather_logits(etm_mb_records *recs, etm_model *m, etm_comm *comm, etm_error *err) {
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_router *rt = etm_moe_router_mut(m->moe[l]);
        const float *mine;
        size_t rows = etm_router_step_logits(rt, &mine);
        if (rows == 0) continue;
        size_t n = rows * (size_t)recs->E, need = n * (size_t)comm->size;
        if (need > recs->logits_cap) {
            recs->logits_all = etm_realloc(recs->logits_all, need * sizeof(float));
            recs->logits_cap = need;
        }
        if (comm->allgather(comm, mine, n * sizeof(float), recs->logits_all, err) != 0) return -1;
        etm_router_set_step_logits(rt, recs->logits_all, rows * (size_t)comm->size, recs->total);
    }
    return 0;
}

/* ---- agreement between the ranks ----------------------------------------------------------- */

/* FNV-1a of the per-rank configuration and the build, so that ranks refuse to train together
 * when they were given different settings or are different programs. */
static uint64_t config_fingerprint(const etm_hparams *hp) {
    char *text = etm_hparams_to_string(hp);
    uint64_t h = 1469598103934665603ull;
    const char *parts[2] = {text, "etmoe " PACKAGE_VERSION};
    for (int p = 0; p < 2; p++)
        for (const unsigned char *c = (const unsigned char *)parts[p]; *c; c++) h = (h ^ *c) * 1099511628211ull;
    free(text);
    return h;
}

int etm_ranks_check_config(etm_comm *comm, const etm_hparams *hp, etm_error *err) {
    uint64_t mine = config_fingerprint(hp);
    uint64_t *all = etm_malloc((size_t)comm->size * sizeof mine);
    etm_error e2;
    int rc = 0;
    if (comm->allgather(comm, &mine, sizeof mine, all, &e2) != 0) {
        rc = etm_fail(err, "%s", e2.msg);
    } else {
        for (int k = 1; k < comm->size && rc == 0; k++)
            if (all[k] != all[0])
                rc = etm_fail(err, "rank %d was started with a configuration or an etmoe build that differs "
                              "from rank 0's: every rank must run the same program with the same "
                              "configuration and overrides", k);
    }
    free(all);
    return rc;
}

int etm_ranks_agree(etm_comm *comm, int failed, int stop_seen, int *stop, etm_error *err) {
    int mine[2] = {failed, stop_seen};
    int *all = etm_malloc((size_t)comm->size * sizeof mine);
    etm_error e2;
    if (comm->allgather(comm, mine, sizeof mine, all, &e2) != 0) {
        free(all);
        return etm_fail(err, "%s", e2.msg), -2;
    }
    int bad = -1;
    *stop = 0;
    for (int k = 0; k < comm->size; k++) {
        if (all[2 * k] && bad < 0) bad = k;
        if (all[2 * k + 1]) *stop = 1;
    }
    free(all);
    return bad;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t bytes) {
    const unsigned char *c = data;
    for (size_t i = 0; i < bytes; i++) h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

int etm_ranks_check_replicas(etm_comm *comm, etm_backend *be, const etm_model *m,
                             const etm_optim *optim, int s, etm_error *err) {
    uint64_t h[3] = {1469598103934665603ull, 1469598103934665603ull, 1469598103934665603ull};
    float *host = etm_malloc(m->n_params * sizeof(float));
    be->download(be, host, m->params_memory, m->n_params * sizeof(float));
    h[0] = fnv1a(h[0], host, m->n_params * sizeof(float));
    free(host);
    for (int i = 0; i < etm_optim_state_count(optim); i++) {
        const etm_optim_state *st = etm_optim_state_at(optim, i);
        size_t n = 1;
        for (int d = 0; d < st->ndim; d++) n *= (size_t)st->shape[d];
        float *buf = etm_malloc(n * sizeof(float) + 1);
        be->download(be, buf, st->data, n * sizeof(float));
        h[1] = fnv1a(h[1], buf, n * sizeof(float));
        free(buf);
    }
    int E = m->hp.n_routed;
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_router_state st;
        etm_moe_get_state(m->moe[l], &st);
        h[2] = fnv1a(h[2], st.threshold, (size_t)E * sizeof(float));
        h[2] = fnv1a(h[2], st.ema, (size_t)E * sizeof(float));
        h[2] = fnv1a(h[2], st.bias, (size_t)E * sizeof(float));
        h[2] = fnv1a(h[2], st.counters, 2 * sizeof(int64_t));
    }
    uint64_t *all = etm_malloc((size_t)comm->size * sizeof h);
    etm_error e2;
    int rc = 0;
    if (comm->allgather(comm, h, sizeof h, all, &e2) != 0) {
        rc = etm_fail(err, "step %d: checking the replicas: %s", s + 1, e2.msg);
    } else {
        static const char *const what[3] = {"parameters differ", "optimizer state differs", "router state differs"};
        for (int k = 1; k < comm->size && rc == 0; k++)
            for (int p = 0; p < 3 && rc == 0; p++)
                if (all[3 * k + p] != all[p])
                    rc = etm_fail(err, "step %d: rank %d's %s from rank 0's (--check-replicas)", s + 1, k, what[p]);
    }
    free(all);
    return rc;
}
