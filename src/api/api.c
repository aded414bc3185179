/* api.c: the public interface of libetmoe (include/etmoe.h) over the internal one: each handle
 * holds the internal object, and errors are copied into the caller's etmoe_error. */
#include <config.h>

#include "etmoe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "common.h"
#include "dump.h"
#include "hparams.h"
#include "model.h"

struct etmoe_backend {
    etm_backend *be; /* owned */
};

struct etmoe_model {
    etm_model *m;          /* owned */
    etm_backend *owned_be; /* the configuration's backend when the caller gave none, else NULL */
};

/* Copies an internal message to the caller's error; returns -1 for `return report(...)`. */
static int report(etmoe_error *out, const etm_error *err) {
    if (out) snprintf(out->message, sizeof out->message, "%s", err->msg);
    return -1;
}

static int fail(etmoe_error *out, const char *what) {
    if (out) snprintf(out->message, sizeof out->message, "%s", what);
    return -1;
}

const char *etmoe_version(void) { return PACKAGE_VERSION; }

/* ---- backends --------------------------------------------------------------------------------- */
etmoe_backend *etmoe_backend_create(const char *name, etmoe_error *out) {
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create(name, &err);
    if (!be) {
        report(out, &err);
        return NULL;
    }
    etmoe_backend *h = etm_malloc(sizeof *h);
    h->be = be;
    return h;
}

void etmoe_backend_free(etmoe_backend *h) {
    if (!h) return;
    etm_backend_free(h->be);
    free(h);
}

const char *etmoe_backend_name(const etmoe_backend *h) { return h->be->name; }

int etmoe_backend_op_count(void) { return ETM_BACKEND_N_OPS; }

const char *etmoe_backend_op_name(int i) { return etm_backend_op_name(i); }

int etmoe_backend_gemm(etmoe_backend *h, int trans_a, int trans_b, int M, int N, int K,
                       float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                       float *C, int ldc, etmoe_error *out) {
    if (!h || !A || !B || !C) return fail(out, "etmoe_backend_gemm: NULL argument");
    if (M < 0 || N < 0 || K < 0) return fail(out, "etmoe_backend_gemm: negative size");
    int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < (N > 1 ? N : 1)) {
        if (out)
            snprintf(out->message, sizeof out->message,
                     "etmoe_backend_gemm: leading dimension too small (lda %d < %d, ldb %d < %d or "
                     "ldc %d < %d)", lda, a_cols, ldb, b_cols, ldc, N);
        return -1;
    }
    etm_backend *be = h->be;
    size_t an = (size_t)a_rows * lda, bn = (size_t)b_rows * ldb, cn = (size_t)M * ldc;
    float *dA = be->alloc(be, (an ? an : 1) * sizeof(float));
    float *dB = be->alloc(be, (bn ? bn : 1) * sizeof(float));
    float *dC = be->alloc(be, (cn ? cn : 1) * sizeof(float));
    be->upload(be, dA, A, an * sizeof(float));
    be->upload(be, dB, B, bn * sizeof(float));
    be->upload(be, dC, C, cn * sizeof(float));
    be->gemm(be, trans_a ? ETM_TRANS : ETM_NO_TRANS, trans_b ? ETM_TRANS : ETM_NO_TRANS, M, N, K,
             alpha, dA, lda, dB, ldb, beta, dC, ldc);
    be->download(be, C, dC, cn * sizeof(float));
    be->free(be, dA);
    be->free(be, dB);
    be->free(be, dC);
    return 0;
}

/* ---- models ----------------------------------------------------------------------------------- */
/* The backend to build on: the caller's, or a new one named by the configuration (*owned). */
static etm_backend *model_backend(etmoe_backend *h, const etm_hparams *hp, etm_backend **owned,
                                  etm_error *err) {
    *owned = NULL;
    if (h) return h->be;
    return *owned = etm_backend_create(hp->backend, err);
}

static etmoe_model *wrap_model(etm_model *m, etm_backend *owned) {
    etmoe_model *h = etm_malloc(sizeof *h);
    h->m = m;
    h->owned_be = owned;
    return h;
}

etmoe_model *etmoe_model_create(const char *config, const char *const *settings, int n_settings,
                                etmoe_backend *bh, int max_batch, etmoe_error *out) {
    etm_error err = {{0}};
    etm_hparams hp;
    if (n_settings < 0 || max_batch < 0) {
        fail(out, "etmoe_model_create: negative n_settings or max_batch");
        return NULL;
    }
    if (etm_hparams_configure(&hp, config, n_settings, (char *const *)settings, &err) != 0) {
        report(out, &err);
        return NULL;
    }
    etm_backend *owned, *be = model_backend(bh, &hp, &owned, &err);
    etm_model *m = be ? etm_model_create(be, &hp, max_batch ? max_batch : hp.batch_size, &err) : NULL;
    if (!m) {
        report(out, &err);
        etm_backend_free(owned);
        return NULL;
    }
    return wrap_model(m, owned);
}

etmoe_model *etmoe_model_load(const char *checkpoint, etmoe_backend *bh, int max_batch,
                              etmoe_error *out) {
    etm_error err = {{0}};
    etm_hparams hp;
    if (max_batch < 0) {
        fail(out, "etmoe_model_load: negative max_batch");
        return NULL;
    }
    if (etm_checkpoint_read_config(checkpoint, &hp, &err) != 0) {
        report(out, &err);
        return NULL;
    }
    etm_backend *owned, *be = model_backend(bh, &hp, &owned, &err);
    etm_model *m = be ? etm_checkpoint_load_model(checkpoint, be, max_batch ? max_batch : hp.batch_size, &err)
                      : NULL;
    if (!m) {
        report(out, &err);
        etm_backend_free(owned);
        return NULL;
    }
    return wrap_model(m, owned);
}

void etmoe_model_free(etmoe_model *h) {
    if (!h) return;
    etm_model_free(h->m);
    etm_backend_free(h->owned_be);
    free(h);
}

int etmoe_model_save(etmoe_model *h, const char *path, etmoe_error *out) {
    etm_error err = {{0}};
    return etm_checkpoint_save(path, h->m, NULL, NULL, &err) == 0 ? 0 : report(out, &err);
}

int etmoe_model_vocab_size(const etmoe_model *h) { return h->m->hp.vocab_size; }
int etmoe_model_seq_len(const etmoe_model *h) { return h->m->hp.seq_len; }
int etmoe_model_max_batch(const etmoe_model *h) { return h->m->max_batch; }
size_t etmoe_model_num_params(const etmoe_model *h) { return etm_model_num_params(h->m); }

int etmoe_model_forward(etmoe_model *h, const int32_t *tokens, const int32_t *targets, int B,
                        int T, etmoe_mode mode, double *loss, etmoe_error *out) {
    etm_error err = {{0}};
    double l = 0.0;
    if (!tokens) return fail(out, "etmoe_model_forward: no tokens");
    if (mode != ETMOE_TRAIN && mode != ETMOE_EVAL)
        return fail(out, "etmoe_model_forward: mode must be ETMOE_TRAIN or ETMOE_EVAL");
    if (etm_model_forward(h->m, tokens, targets, B, T, mode == ETMOE_TRAIN ? ETM_MOE_TRAIN : ETM_MOE_EVAL,
                          &l, &err) != 0)
        return report(out, &err);
    if (loss) *loss = l;
    return 0;
}

int etmoe_model_backward(etmoe_model *h, double *grad_norm, etmoe_error *out) {
    etm_error err = {{0}};
    etm_model *m = h->m;
    etm_model_zero_grad(m);
    if (etm_model_backward(m, 1.0f, &err) != 0) return report(out, &err);
    if (grad_norm) *grad_norm = sqrt(m->be->sum_squares(m->be, m->grads_memory, m->n_params));
    return 0;
}

int etmoe_model_logits(etmoe_model *h, float *out_logits, int first, int rows, etmoe_error *out) {
    etm_error err = {{0}};
    if (!out_logits) return fail(out, "etmoe_model_logits: no output array");
    return etm_model_logits(h->m, out_logits, first, rows, &err) == 0 ? 0 : report(out, &err);
}

int etmoe_model_dump(etmoe_model *h, const int32_t *tokens, const int32_t *targets, int B,
                     const char *source, const char *path, double *loss, etmoe_error *out) {
    etm_error err = {{0}};
    if (!tokens || !targets || !path) return fail(out, "etmoe_model_dump: NULL argument");
    return etm_dump_write(h->m, tokens, targets, B, source, path, loss, &err) == 0 ? 0
                                                                                  : report(out, &err);
}
