/* dump.c: the dump file of one training forward+backward (dump.h; the file is doc/dump-format.md);
 * comparing two dump files is dump_compare.c, routing statistics for inspect inspect.c. */
#include <config.h>

#include "dump.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "router.h"
#include "safetensors.h"

static const char *rule_name(etm_route_rule r) {
    switch (r) {
    case ETM_RULE_TOPK: return "topk";
    case ETM_RULE_EC: return "ec";
    case ETM_RULE_THRESHOLD: return "threshold";
    }
    return "?";
}

/* ---- the dump file ------------------------------------------------------------------------- */
/* Downloads n bytes of backend memory into a fresh host buffer. */
static void *download(etm_backend *be, const void *src, size_t bytes) {
    void *host = etm_malloc(bytes ? bytes : 1);
    if (bytes) be->download(be, host, src, bytes);
    return host;
}

/* Adds the routing of MoE layer l's last forward (N tokens) under "routing.<l>.*". */
static int add_routing(etm_st_writer *w, etm_model *m, int l, int N, etm_error *err) {
    etm_backend *be = m->be;
    const etm_moe_layer *layer = m->moe[l];
    const etm_router *rt = etm_moe_router(layer);
    int E = m->hp.n_routed;
    int64_t ne[2] = {N, E}, e1 = E;
    size_t cells = (size_t)N * (size_t)E;
    char name[64];
    etm_router_state st;
    etm_moe_get_state(layer, &st);

    snprintf(name, sizeof name, "routing.%d.mask", l);
    if (etm_st_add_owned(w, name, ETM_ST_U8, 2, ne, download(be, etm_moe_mask(layer), cells), err)) return -1;
    snprintf(name, sizeof name, "routing.%d.logits", l);
    if (etm_st_add_owned(w, name, ETM_ST_F32, 2, ne, download(be, etm_moe_logits(layer), cells * sizeof(float)), err))
        return -1;
    snprintf(name, sizeof name, "routing.%d.gates", l);
    if (etm_st_add_owned(w, name, ETM_ST_F32, 2, ne, download(be, etm_router_scores(rt), cells * sizeof(float)), err))
        return -1;
    snprintf(name, sizeof name, "routing.%d.threshold", l);
    if (etm_st_add_copy(w, name, ETM_ST_F32, 1, &e1, st.threshold, err)) return -1;
    snprintf(name, sizeof name, "routing.%d.bias", l);
    if (etm_st_add_copy(w, name, ETM_ST_F32, 1, &e1, st.bias, err)) return -1;
    snprintf(name, sizeof name, "routing.%d.rule", l);
    return etm_st_set_metadata(w, name, rule_name(etm_router_rule(rt, ETM_MOE_TRAIN)), err);
}

int etm_dump_write(etm_model *m, const int32_t *inputs, const int32_t *targets, int B,
                   const char *source, const char *path, double *loss_out, etm_error *err) {
    int T = m->hp.seq_len, V = m->hp.vocab_size, N = B * T;
    if (!targets) return etm_fail(err, "dump: targets are required (the dump holds a backward pass)");
    etm_model_zero_grad(m);
    double loss = 0;
    if (etm_model_forward(m, inputs, targets, B, T, ETM_MOE_TRAIN, &loss, err) != 0) return -1;

    etm_st_writer *w = etm_st_writer_create();
    int64_t bt[2] = {B, T}, btv[3] = {B, T, V};
    int rc = etm_st_add_copy(w, "inputs", ETM_ST_I32, 2, bt, inputs, err);
    if (rc == 0) rc = etm_st_add_copy(w, "targets", ETM_ST_I32, 2, bt, targets, err);
    if (rc == 0) {
        float *logits = etm_malloc((size_t)N * (size_t)V * sizeof(float));
        rc = etm_model_logits(m, logits, 0, N, err);
        if (rc == 0) rc = etm_st_add_owned(w, "logits", ETM_ST_F32, 3, btv, logits, err);
        else free(logits);
    }
    if (rc == 0) rc = etm_st_add_copy(w, "losses", ETM_ST_F32, 2, bt, m->host_losses, err);
    if (rc == 0) rc = etm_st_add_copy(w, "loss", ETM_ST_F64, 0, NULL, &loss, err);
    for (int l = 0; rc == 0 && l < m->hp.n_layer; l++)
        if (m->moe[l]) rc = add_routing(w, m, l, N, err);

    if (rc == 0) rc = etm_model_backward(m, 1.0f, err);
    for (int i = 0; rc == 0 && i < m->n_tensors; i++) {
        int64_t shape[3];
        size_t n = 1;
        for (int d = 0; d < m->table[i].ndim; d++) {
            shape[d] = m->table[i].shape[d];
            n *= (size_t)shape[d];
        }
        char name[96];
        snprintf(name, sizeof name, "grad.%s", m->table[i].name);
        rc = etm_st_add_owned(w, name, ETM_ST_F32, m->table[i].ndim, shape,
                              download(m->be, m->table[i].grad, n * sizeof(float)), err);
    }

    char *config = etm_hparams_to_string(&m->hp);
    char loss_text[64], batch_text[32];
    snprintf(loss_text, sizeof loss_text, "%.17g", loss);
    snprintf(batch_text, sizeof batch_text, "%d", B);
    if (rc == 0) rc = etm_st_set_metadata(w, "format", ETM_DUMP_FORMAT, err);
    if (rc == 0) rc = etm_st_set_metadata(w, "config", config, err);
    if (rc == 0) rc = etm_st_set_metadata(w, "backend", m->be->name, err);
    if (rc == 0) rc = etm_st_set_metadata(w, "loss", loss_text, err);
    if (rc == 0) rc = etm_st_set_metadata(w, "batch", batch_text, err);
    if (rc == 0) rc = etm_st_set_metadata(w, "etmoe_version", PACKAGE_VERSION, err);
    if (rc == 0 && source) rc = etm_st_set_metadata(w, "source", source, err);
    if (rc == 0) rc = etm_st_write(w, path, err);
    free(config);
    etm_st_writer_free(w);
    if (rc == 0 && loss_out) *loss_out = loss;
    return rc;
}
