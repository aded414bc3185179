/* checkpoint_optim.c: the optimizer's state tensors in a checkpoint (etm_optim_save, etm_optim_load,
 * declared in checkpoint.h). The optimizer only lists its state (etm_optim_state_at); the file
 * format is the checkpoint layer's business, so src/optim/ never sees safetensors. */
#include <config.h>

#include "checkpoint.h"
#include "optim.h"
#include "safetensors.h"

#include <stdlib.h>

static size_t state_numel(const etm_optim_state *st) {
    size_t n = 1;
    for (int d = 0; d < st->ndim; d++) n *= (size_t)st->shape[d];
    return n;
}

int etm_optim_save(const etm_optim *opt, etm_st_writer *w, etm_error *err) {
    etm_backend *be = etm_optim_backend(opt);
    int n_states = etm_optim_state_count(opt);
    for (int i = 0; i < n_states; i++) {
        const etm_optim_state *st = etm_optim_state_at(opt, i);
        size_t bytes = state_numel(st) * sizeof(float);
        float *host = etm_malloc(bytes);
        be->download(be, host, st->data, bytes);
        if (etm_st_add_owned(w, st->name, ETM_ST_F32, st->ndim, st->shape, host, err) != 0) return -1;
    }
    return 0;
}

int etm_optim_load(etm_optim *opt, etm_st_file *f, etm_error *err) {
    etm_backend *be = etm_optim_backend(opt);
    int n_states = etm_optim_state_count(opt);
    /* Everything must be there before anything changes. */
    for (int i = 0; i < n_states; i++) {
        const etm_optim_state *st = etm_optim_state_at(opt, i);
        const etm_st_tensor *t = etm_st_find(f, st->name);
        if (!t)
            return etm_fail(err, "%s: no optimizer state '%s' (was the checkpoint written with another "
                            "matrix_optimizer?)", etm_st_path(f), st->name);
        int same = t->dtype == ETM_ST_F32 && t->ndim == st->ndim;
        for (int d = 0; same && d < st->ndim; d++) same = t->shape[d] == st->shape[d];
        if (!same) {
            char a[128], b[128];
            return etm_fail(err, "%s: optimizer state '%s' is %s %s, expected F32 %s", etm_st_path(f),
                            st->name, etm_st_dtype_name(t->dtype),
                            etm_st_shape_string(t->ndim, t->shape, a, sizeof a),
                            etm_st_shape_string(st->ndim, st->shape, b, sizeof b));
        }
    }
    for (int i = 0; i < n_states; i++) {
        const etm_optim_state *st = etm_optim_state_at(opt, i);
        size_t bytes = state_numel(st) * sizeof(float);
        float *host = etm_malloc(bytes);
        int rc = etm_st_read(f, st->name, ETM_ST_F32, st->ndim, st->shape, host, err);
        if (rc == 0) be->upload(be, st->data, host, bytes);
        free(host);
        if (rc != 0) return -1;
    }
    return 0;
}
