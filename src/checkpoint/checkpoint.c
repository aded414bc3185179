/* checkpoint.c: writing and validating-then-restoring checkpoints (checkpoint.h), on top of the
 * safetensors reader and writer. The tensor names and metadata keys are those of
 * doc/checkpoint-format.md. */
#include <config.h>

#include "checkpoint.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "safetensors.h"

#include "optim.h"

#define N_ROUTER_FIELDS 4
static const char *const router_fields[N_ROUTER_FIELDS] = {"threshold", "ema", "bias", "counters"};

/* Keys a resumed run may set differently from its checkpoint: nothing in the parameters, the
 * optimizer state or the data order depends on them. Every other key (including any added to
 * hparams later) must agree. */
static const char *const resumable_keys[] = {
    "grad_accum", "max_steps", "lr_matrix", "lr_embed", "lr_head", "lr_router", "adam_beta1",
    "adam_beta2", "adam_eps", "weight_decay", "matrix_weight_decay", "lr_expert_scale",
    "muon_momentum_start", "muon_momentum_end",
    "muon_warmup_steps", "ns_steps", "muon_ns_gram", "warmup_steps", "decay_fraction", "final_lr_frac", "grad_clip",
    "train_data", "val_data", "tokenizer", "out_dir", "backend", "eval_every", "eval_batches",
    "ckpt_every", "log_every", "thresholds_every"};

const char *etm_checkpoint_config_difference(const etm_hparams *ckpt, const etm_hparams *run) {
    etm_hparams merged = *ckpt;
    for (size_t i = 0; i < ETM_ARRAY_LEN(resumable_keys); i++) {
        char value[1100];
        etm_error ignored;
        if (etm_hparams_get(run, resumable_keys[i], value, sizeof value, &ignored) == 0)
            etm_hparams_set(&merged, resumable_keys[i], value, &ignored);
    }
    return etm_hparams_first_difference(&merged, run);
}

/* ---- the tensors a model expects ----------------------------------------------------------- */
static void param_shape(const etm_model *m, int i, int *ndim, int64_t shape[3]) {
    *ndim = m->table[i].ndim;
    for (int d = 0; d < 3; d++) shape[d] = d < *ndim ? (int64_t)m->table[i].shape[d] : 1;
}

static size_t shape_numel(int ndim, const int64_t *shape) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
    return n;
}

static void router_name(char *buf, size_t len, int layer, int field) {
    snprintf(buf, len, "router.%d.%s", layer, router_fields[field]);
}

static void router_shape(const etm_model *m, int field, etm_st_dtype *dtype, int64_t *shape) {
    *dtype = field == 3 ? ETM_ST_I64 : ETM_ST_F32;
    *shape = field == 3 ? 2 : m->hp.n_routed;
}

/* ---- saving -------------------------------------------------------------------------------- */
int etm_checkpoint_save(const char *path, etm_model *m, const struct etm_optim *opt,
                        const etm_checkpoint_extra *extra, etm_error *err) {
    etm_backend *be = m->be;
    etm_st_writer *w = etm_st_writer_create();
    int rc = 0;
    for (int i = 0; rc == 0 && i < m->n_tensors; i++) {
        int ndim;
        int64_t shape[3];
        param_shape(m, i, &ndim, shape);
        size_t bytes = shape_numel(ndim, shape) * sizeof(float);
        float *host = etm_malloc(bytes);
        be->download(be, host, m->table[i].data, bytes);
        rc = etm_st_add_owned(w, m->table[i].name, ETM_ST_F32, ndim, shape, host, err);
    }
    for (int l = 0; rc == 0 && l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        etm_router_state st;
        etm_moe_get_state(m->moe[l], &st);
        const void *field_data[N_ROUTER_FIELDS] = {st.threshold, st.ema, st.bias, st.counters};
        for (int f = 0; rc == 0 && f < N_ROUTER_FIELDS; f++) {
            char name[64];
            etm_st_dtype dtype;
            int64_t shape;
            router_name(name, sizeof name, l, f);
            router_shape(m, f, &dtype, &shape);
            rc = etm_st_add_copy(w, name, dtype, 1, &shape, field_data[f], err);
        }
    }
    if (rc == 0 && opt) rc = etm_optim_save(opt, w, err);
    char step_text[32] = "";
    if (rc == 0 && extra) {
        int64_t rng[4], pos[ETM_LOADER_POS_LEN];
        int64_t four = 4, pos_len = ETM_LOADER_POS_LEN;
        memcpy(rng, extra->rng.s, sizeof rng);
        etm_loader_pos_pack(&extra->loader, pos);
        rc = etm_st_add_copy(w, "step", ETM_ST_I64, 0, NULL, &extra->step, err);
        if (rc == 0) rc = etm_st_add_copy(w, "rng", ETM_ST_I64, 1, &four, rng, err);
        if (rc == 0) rc = etm_st_add_copy(w, "loader.pos", ETM_ST_I64, 1, &pos_len, pos, err);
        snprintf(step_text, sizeof step_text, "%" PRId64, extra->step);
    }
    char *config = etm_hparams_to_string(&m->hp);
    if (rc == 0) rc = etm_st_set_metadata(w, "format", ETM_CHECKPOINT_FORMAT, err);
    if (rc == 0) rc = etm_st_set_metadata(w, "config", config, err);
    if (rc == 0) rc = etm_st_set_metadata(w, "etmoe_version", PACKAGE_VERSION, err);
    if (rc == 0 && extra) rc = etm_st_set_metadata(w, "step", step_text, err);
    if (rc == 0) rc = etm_st_write(w, path, err);
    free(config);
    etm_st_writer_free(w);
    return rc;
}

/* ---- reading ------------------------------------------------------------------------------- */
/* Opens path and checks its format tag. */
static etm_st_file *open_checkpoint(const char *path, etm_error *err) {
    etm_st_file *f = etm_st_open(path, err);
    if (!f) return NULL;
    const char *format = etm_st_metadata(f, "format");
    if (!format || strcmp(format, ETM_CHECKPOINT_FORMAT)) {
        if (format && !strncmp(format, "etmoe-checkpoint-", strlen("etmoe-checkpoint-")))
            etm_fail(err, "%s: checkpoint format '%s', this etmoe reads '%s'", path, format,
                     ETM_CHECKPOINT_FORMAT);
        else if (format)
            etm_fail(err, "%s: not an etmoe checkpoint (a safetensors file of format '%s')", path, format);
        else
            etm_fail(err, "%s: not an etmoe checkpoint (no \"format\" in the safetensors metadata)", path);
        etm_st_close(f);
        return NULL;
    }
    return f;
}

static int config_of(etm_st_file *f, etm_hparams *hp, etm_error *err) {
    const char *text = etm_st_metadata(f, "config");
    if (!text) return etm_fail(err, "%s: the checkpoint holds no configuration (\"config\" metadata)", etm_st_path(f));
    return etm_hparams_from_string(hp, text, etm_st_path(f), err);
}

int etm_checkpoint_read_config(const char *path, etm_hparams *hp, etm_error *err) {
    etm_st_file *f = open_checkpoint(path, err);
    if (!f) return -1;
    etm_hparams read;
    int rc = config_of(f, &read, err);
    if (rc == 0) *hp = read;
    etm_st_close(f);
    return rc;
}

/* Checks that f holds name with this dtype and shape; a message naming both otherwise. */
static int expect_tensor(etm_st_file *f, const char *what, const char *name, etm_st_dtype dtype,
                         int ndim, const int64_t *shape, etm_error *err) {
    char want[128], got[128];
    const etm_st_tensor *t = etm_st_find(f, name);
    etm_st_shape_string(ndim, shape, want, sizeof want);
    if (!t)
        return etm_fail(err, "%s: missing %s tensor '%s' (expected %s %s)", etm_st_path(f), what, name,
                        etm_st_dtype_name(dtype), want);
    int same = t->dtype == dtype && t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same)
        return etm_fail(err, "%s: %s tensor '%s' is %s %s, the model expects %s %s", etm_st_path(f), what,
                        name, etm_st_dtype_name(t->dtype), etm_st_shape_string(t->ndim, t->shape, got, sizeof got),
                        etm_st_dtype_name(dtype), want);
    return 0;
}

static int is_param(const etm_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->table[i].name, name)) return 1;
    return 0;
}

static int is_router_tensor(const etm_model *m, const char *name) {
    char buf[64];
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        for (int f = 0; f < N_ROUTER_FIELDS; f++) {
            router_name(buf, sizeof buf, l, f);
            if (!strcmp(buf, name)) return 1;
        }
    }
    return 0;
}

static int is_optim_state(const struct etm_optim *opt, const char *name) {
    for (int i = 0; i < etm_optim_state_count(opt); i++)
        if (!strcmp(etm_optim_state_at(opt, i)->name, name)) return 1;
    return 0;
}

static int is_position(const char *name) {
    return !strcmp(name, "step") || !strcmp(name, "rng") || !strcmp(name, "loader.pos");
}

/* Every tensor in f must be one the model, the optimizer or the position accounts for. Optimizer
 * and position tensors are allowed (and skipped) when the caller does not restore them. */
static int check_no_unexpected(etm_st_file *f, const etm_model *m, const struct etm_optim *opt,
                               etm_error *err) {
    for (int i = 0; i < etm_st_count(f); i++) {
        const char *name = etm_st_tensor_at(f, i)->name;
        if (is_param(m, name) || is_router_tensor(m, name) || is_position(name)) continue;
        if (!strncmp(name, "opt.", 4) && (!opt || is_optim_state(opt, name))) continue;
        if (!strncmp(name, "router.", 7))
            return etm_fail(err, "%s: unexpected tensor '%s' (router state of a layer that is not an MoE "
                            "layer of this model)", etm_st_path(f), name);
        if (!strncmp(name, "opt.", 4))
            return etm_fail(err, "%s: unexpected tensor '%s' (optimizer state this optimizer does not have)",
                            etm_st_path(f), name);
        return etm_fail(err, "%s: unexpected tensor '%s' (not a parameter of this model)", etm_st_path(f), name);
    }
    return 0;
}

static int check_config(etm_st_file *f, const etm_model *m, etm_error *err) {
    etm_hparams ck;
    if (config_of(f, &ck, err) != 0) return -1;
    const char *key = etm_checkpoint_config_difference(&ck, &m->hp);
    if (!key) return 0;
    char a[1100] = "?", b[1100] = "?";
    etm_error ignored;
    etm_hparams_get(&ck, key, a, sizeof a, &ignored);
    etm_hparams_get(&m->hp, key, b, sizeof b, &ignored);
    return etm_fail(err, "%s: configuration differs: the checkpoint has %s = %s, the model %s = %s",
                    etm_st_path(f), key, a, key, b);
}

/* Host copies of everything restored, read before anything in the model changes. */
typedef struct {
    float *params;          /* (sum of parameter sizes) in table order */
    float *router_f32;      /* (L, 3, E) threshold, ema, bias per layer */
    int64_t *router_count;  /* (L, 2) */
    int64_t step;
    int64_t rng[4];
    int64_t pos[ETM_LOADER_POS_LEN];
} staged_state;

static void staged_free(staged_state *s) {
    free(s->params);
    free(s->router_f32);
    free(s->router_count);
}

static int validate(etm_st_file *f, const etm_model *m, const struct etm_optim *opt,
                    const etm_checkpoint_extra *extra, etm_error *err) {
    if (check_config(f, m, err) != 0) return -1;
    for (int i = 0; i < m->n_tensors; i++) {
        int ndim;
        int64_t shape[3];
        param_shape(m, i, &ndim, shape);
        if (expect_tensor(f, "parameter", m->table[i].name, ETM_ST_F32, ndim, shape, err) != 0) return -1;
    }
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        for (int fi = 0; fi < N_ROUTER_FIELDS; fi++) {
            char name[64];
            etm_st_dtype dtype;
            int64_t shape;
            router_name(name, sizeof name, l, fi);
            router_shape(m, fi, &dtype, &shape);
            if (expect_tensor(f, "router state", name, dtype, 1, &shape, err) != 0) return -1;
        }
    }
    if (opt)
        for (int i = 0; i < etm_optim_state_count(opt); i++) {
            const etm_optim_state *st = etm_optim_state_at(opt, i);
            if (expect_tensor(f, "optimizer state", st->name, ETM_ST_F32, st->ndim, st->shape, err) != 0)
                return -1;
        }
    if (extra) {
        int64_t four = 4, pos_len = ETM_LOADER_POS_LEN;
        if (expect_tensor(f, "training position", "step", ETM_ST_I64, 0, NULL, err) != 0 ||
            expect_tensor(f, "training position", "rng", ETM_ST_I64, 1, &four, err) != 0 ||
            expect_tensor(f, "training position", "loader.pos", ETM_ST_I64, 1, &pos_len, err) != 0)
            return -1;
    }
    return check_no_unexpected(f, m, opt, err);
}

/* A NaN or an infinity in a weight or a router threshold would silently poison every output. */
static int check_finite(etm_st_file *f, const char *name, const float *x, size_t n, etm_error *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return etm_fail(err, "%s: tensor '%s' holds %s at element %zu: the checkpoint is corrupt", etm_st_path(f),
                            name, isnan(x[i]) ? "NaN" : "an infinity", i);
    return 0;
}

static int stage(etm_st_file *f, const etm_model *m, const etm_checkpoint_extra *extra,
                 staged_state *s, etm_error *err) {
    int L = m->hp.n_layer, E = m->hp.n_routed;
    size_t total = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        int ndim;
        int64_t shape[3];
        param_shape(m, i, &ndim, shape);
        total += shape_numel(ndim, shape);
    }
    s->params = etm_malloc(ETM_MAX(total, (size_t)1) * sizeof(float));
    s->router_f32 = etm_calloc((size_t)L * 3 * (size_t)ETM_MAX(E, 1), sizeof(float));
    s->router_count = etm_calloc((size_t)L * 2, sizeof(int64_t));
    size_t off = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        int ndim;
        int64_t shape[3];
        param_shape(m, i, &ndim, shape);
        if (etm_st_read(f, m->table[i].name, ETM_ST_F32, ndim, shape, s->params + off, err) != 0) return -1;
        if (check_finite(f, m->table[i].name, s->params + off, shape_numel(ndim, shape), err) != 0) return -1;
        off += shape_numel(ndim, shape);
    }
    for (int l = 0; l < L; l++) {
        if (!m->moe[l]) continue;
        for (int fi = 0; fi < N_ROUTER_FIELDS; fi++) {
            char name[64];
            etm_st_dtype dtype;
            int64_t shape;
            router_name(name, sizeof name, l, fi);
            router_shape(m, fi, &dtype, &shape);
            void *dst = fi == 3 ? (void *)(s->router_count + 2 * l) : (void *)(s->router_f32 + ((size_t)l * 3 + fi) * E);
            if (etm_st_read(f, name, dtype, 1, &shape, dst, err) != 0) return -1;
            if (fi != 3 && check_finite(f, name, dst, (size_t)shape, err) != 0) return -1;
        }
        const int64_t *cnt = s->router_count + 2 * l;
        if (cnt[0] < 0 || cnt[1] < 0)
            return etm_fail(err, "%s: tensor 'router.%d.counters' holds a negative count (%" PRId64 ", %" PRId64 ")",
                            etm_st_path(f), l, cnt[0], cnt[1]);
    }
    if (extra) {
        int64_t four = 4, pos_len = ETM_LOADER_POS_LEN;
        if (etm_st_read(f, "step", ETM_ST_I64, 0, NULL, &s->step, err) != 0 ||
            etm_st_read(f, "rng", ETM_ST_I64, 1, &four, s->rng, err) != 0 ||
            etm_st_read(f, "loader.pos", ETM_ST_I64, 1, &pos_len, s->pos, err) != 0)
            return -1;
        if (s->step < 0) return etm_fail(err, "%s: tensor 'step' is negative (%" PRId64 ")", etm_st_path(f), s->step);
        static const char *const pos_fields[ETM_LOADER_POS_LEN] = {"epoch", "index", "seed", "n_windows"};
        for (int k = 0; k < ETM_LOADER_POS_LEN; k++)
            if (k != 2 && s->pos[k] < 0) /* the seed is any 64-bit pattern; the rest are counts */
                return etm_fail(err, "%s: tensor 'loader.pos': the %s is negative (%" PRId64 ")", etm_st_path(f),
                                pos_fields[k], s->pos[k]);
        if (!s->rng[0] && !s->rng[1] && !s->rng[2] && !s->rng[3])
            return etm_fail(err, "%s: tensor 'rng' is all zero, not a valid xoshiro256** state", etm_st_path(f));
    }
    return 0;
}

static void commit(etm_model *m, const staged_state *s, etm_checkpoint_extra *extra) {
    etm_backend *be = m->be;
    size_t off = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        int ndim;
        int64_t shape[3];
        param_shape(m, i, &ndim, shape);
        size_t n = shape_numel(ndim, shape);
        be->upload(be, m->table[i].data, s->params + off, n * sizeof(float));
        off += n;
    }
    int E = m->hp.n_routed;
    for (int l = 0; l < m->hp.n_layer; l++) {
        if (!m->moe[l]) continue;
        const float *r = s->router_f32 + (size_t)l * 3 * E;
        etm_moe_set_state(m->moe[l], r, r + E, r + 2 * E, s->router_count + 2 * l);
    }
    if (extra) {
        extra->step = s->step;
        memcpy(extra->rng.s, s->rng, sizeof extra->rng.s);
        etm_loader_pos_unpack(s->pos, &extra->loader);
    }
}

int etm_checkpoint_load(const char *path, etm_model *m, struct etm_optim *opt,
                        etm_checkpoint_extra *extra, etm_error *err) {
    etm_st_file *f = open_checkpoint(path, err);
    if (!f) return -1;
    staged_state s;
    memset(&s, 0, sizeof s);
    int rc = validate(f, m, opt, extra, err);
    if (rc == 0) rc = stage(f, m, extra, &s, err);
    /* The optimizer validates all of its tensors before changing any; it goes last among the
     * reads so that a failure there still leaves the model untouched. */
    if (rc == 0 && opt) rc = etm_optim_load(opt, f, err);
    if (rc == 0) commit(m, &s, extra);
    staged_free(&s);
    etm_st_close(f);
    return rc;
}

etm_model *etm_checkpoint_load_model(const char *path, etm_backend *be, int max_batch, etm_error *err) {
    etm_hparams hp;
    if (etm_checkpoint_read_config(path, &hp, err) != 0) return NULL;
    etm_error why = {{0}};
    etm_model *m = etm_model_create(be, &hp, max_batch, &why);
    if (!m) {
        etm_fail(err, "%s: cannot build its model: %s", path, why.msg);
        return NULL;
    }
    if (etm_checkpoint_load(path, m, NULL, NULL, err) != 0) {
        etm_model_free(m);
        return NULL;
    }
    return m;
}
