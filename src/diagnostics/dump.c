/* dump.c: the dump file of one training forward+backward, the tensor-by-tensor comparison of two
 * dump files, and routing statistics for inspect (dump.h; the file is doc/dump-format.md). */
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

/* ---- comparing dump files ------------------------------------------------------------------ */
void etm_compare_opts_default(etm_compare_opts *o) {
    o->rtol = 1e-4;
    o->atol = 1e-6;
    o->max_flips = 0;
    o->max_listed = 10;
}

void etm_compare_result_free(etm_compare_result *r) {
    if (!r) return;
    free(r->rows);
    r->rows = NULL;
    r->n_rows = 0;
}

static int is_float_dtype(etm_st_dtype d) { return d == ETM_ST_F32 || d == ETM_ST_F64; }

/* Element i of a float tensor as a double. */
static double float_at(const void *data, etm_st_dtype d, uint64_t i) {
    return d == ETM_ST_F64 ? ((const double *)data)[i] : (double)((const float *)data)[i];
}

/* "routing.<l>.mask" -> l, or -1 when name is not a mask's. */
static int mask_layer(const char *name) {
    int l, n = 0;
    if (sscanf(name, "routing.%d.mask%n", &l, &n) == 1 && name[n] == '\0' && l >= 0) return l;
    return -1;
}

static void *read_whole(etm_st_file *f, const etm_st_tensor *t, etm_error *err) {
    uint64_t bytes = t->end - t->begin;
    void *buf = etm_malloc(bytes ? (size_t)bytes : 1);
    if (etm_st_read(f, t->name, t->dtype, t->ndim, t->shape, buf, err) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static uint64_t numel_of(const etm_st_tensor *t) {
    uint64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

static void compare_floats(etm_compare_row *row, const void *a, const void *b, etm_st_dtype d,
                           const etm_compare_opts *o) {
    double diff2 = 0, norm_a = 0, norm_b = 0, worst_excess = -INFINITY;
    for (uint64_t i = 0; i < row->numel; i++) {
        double x = float_at(a, d, i), y = float_at(b, d, i);
        int nx = isnan(x), ny = isnan(y);
        row->nan_a += (uint64_t)nx;
        row->nan_b += (uint64_t)ny;
        if (nx || ny) {
            if (nx != ny) {
                row->n_bad++;
                if (worst_excess < INFINITY) row->worst = i;
                worst_excess = INFINITY;
            }
            continue;
        }
        if (isinf(x) || isinf(y)) {
            if (x != y) {
                row->n_bad++;
                if (worst_excess < INFINITY) row->worst = i;
                worst_excess = INFINITY;
            }
            continue;
        }
        double ad = fabs(x - y), scale = fmax(fabs(x), fabs(y));
        double rel = scale > 0 ? ad / scale : 0;
        row->max_abs = fmax(row->max_abs, ad);
        row->max_rel = fmax(row->max_rel, rel);
        diff2 += ad * ad;
        norm_a += x * x;
        norm_b += y * y;
        double excess = ad - (o->atol + o->rtol * scale);
        if (excess > 0) row->n_bad++;
        if (excess > worst_excess) {
            worst_excess = excess;
            row->worst = i;
        }
    }
    double norm = sqrt(fmax(norm_a, norm_b));
    row->norm_err = norm > 0 ? sqrt(diff2) / norm : (diff2 > 0 ? INFINITY : 0);
}

static void compare_exact(etm_compare_row *row, const void *a, const void *b, size_t elem) {
    const unsigned char *x = a, *y = b;
    int first = 1;
    for (uint64_t i = 0; i < row->numel; i++)
        if (memcmp(x + i * elem, y + i * elem, elem)) {
            row->n_bad++;
            if (first) row->worst = i;
            first = 0;
        }
}

/* Reads a float tensor called name from f if it exists with numel elements; NULL otherwise. */
static float *optional_f32(etm_st_file *f, const char *name, uint64_t numel) {
    const etm_st_tensor *t = etm_st_find(f, name);
    if (!t || t->dtype != ETM_ST_F32 || numel_of(t) != numel) return NULL;
    etm_error ignored;
    return read_whole(f, t, &ignored);
}

/* Lists the disagreements of mask layer l: the token, expert and both sides' logits and their
 * distance from the thresholds when the dumps hold them. */
static void report_flips(FILE *out, etm_st_file *fa, etm_st_file *fb, const etm_st_tensor *t,
                         const uint8_t *ma, const uint8_t *mb, int l, int max_listed) {
    if (t->ndim != 2) return;
    int64_t N = t->shape[0], E = t->shape[1];
    char name[64];
    snprintf(name, sizeof name, "routing.%d.logits", l);
    float *la = optional_f32(fa, name, (uint64_t)(N * E)), *lb = optional_f32(fb, name, (uint64_t)(N * E));
    snprintf(name, sizeof name, "routing.%d.threshold", l);
    float *ca = optional_f32(fa, name, (uint64_t)E), *cb = optional_f32(fb, name, (uint64_t)E);
    long listed = 0, total = 0;
    double min_margin = INFINITY, max_margin = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t e = 0; e < E; e++) {
            int64_t i = n * E + e;
            if (ma[i] == mb[i]) continue;
            total++;
            if (la && ca) {
                double margin = fabs((double)la[i] - (double)ca[e]);
                min_margin = fmin(min_margin, margin);
                max_margin = fmax(max_margin, margin);
            }
            if (listed >= max_listed) continue;
            listed++;
            fprintf(out, "    layer %d token %" PRId64 " expert %" PRId64 ": A %s, B %s", l, n, e,
                    ma[i] ? "routed" : "not routed", mb[i] ? "routed" : "not routed");
            if (la && lb) fprintf(out, "; logit A %.9g, B %.9g", la[i], lb[i]);
            if (la && ca) fprintf(out, "; logit - threshold: A %+.3g", (double)la[i] - ca[e]);
            if (lb && cb) fprintf(out, ", B %+.3g", (double)lb[i] - cb[e]);
            fputc('\n', out);
        }
    if (total > listed) fprintf(out, "    ... and %ld more disagreements in layer %d\n", total - listed, l);
    if (la && ca && total > 0)
        fprintf(out, "    layer %d: |logit - threshold| in A over the %ld disagreements: min %.3g, max %.3g\n",
                l, total, min_margin, max_margin);
    free(la);
    free(lb);
    free(ca);
    free(cb);
}

static const char *status_text(const etm_compare_row *row, const etm_compare_opts *o) {
    switch (row->status) {
    case ETM_CMP_OK: return "ok";
    case ETM_CMP_DIFFERS: return row->is_mask ? "FLIPS" : "DIFFERS";
    case ETM_CMP_ONLY_A: return "ONLY IN A";
    case ETM_CMP_ONLY_B: return "ONLY IN B";
    case ETM_CMP_MISMATCH: return "MISMATCH";
    }
    (void)o;
    return "?";
}

static void print_row(FILE *out, const etm_compare_row *row, const etm_compare_opts *o) {
    fprintf(out, "%-36s %-9s", row->name, status_text(row, o));
    if (row->status == ETM_CMP_ONLY_A || row->status == ETM_CMP_ONLY_B || row->status == ETM_CMP_MISMATCH) {
        fputc('\n', out);
        return;
    }
    fprintf(out, " %10.3g %10.3g %10.3g %10" PRIu64 "/%-10" PRIu64 " %6" PRIu64 " %6" PRIu64, row->max_abs,
            row->max_rel, row->norm_err, row->n_bad, row->numel, row->nan_a, row->nan_b);
    if (row->n_bad) fprintf(out, "  first/worst at %" PRIu64, row->worst);
    fputc('\n', out);
}

/* Compares one tensor present in both files; returns 0, or -1 when a read fails. */
static int compare_tensor(etm_st_file *fa, etm_st_file *fb, const etm_st_tensor *ta,
                          const etm_st_tensor *tb, etm_compare_row *row, const etm_compare_opts *o,
                          FILE *out, etm_error *err) {
    int same = ta->dtype == tb->dtype && ta->ndim == tb->ndim;
    for (int d = 0; same && d < ta->ndim; d++) same = ta->shape[d] == tb->shape[d];
    if (!same) {
        row->status = ETM_CMP_MISMATCH;
        if (out) {
            char sa[128], sb[128];
            fprintf(out, "%-36s MISMATCH  A is %s %s, B is %s %s\n", row->name, etm_st_dtype_name(ta->dtype),
                    etm_st_shape_string(ta->ndim, ta->shape, sa, sizeof sa), etm_st_dtype_name(tb->dtype),
                    etm_st_shape_string(tb->ndim, tb->shape, sb, sizeof sb));
        }
        return 0;
    }
    row->numel = numel_of(ta);
    void *a = read_whole(fa, ta, err);
    if (!a) return -1;
    void *b = read_whole(fb, tb, err);
    if (!b) {
        free(a);
        return -1;
    }
    int layer = ta->dtype == ETM_ST_U8 ? mask_layer(ta->name) : -1;
    row->is_mask = layer >= 0;
    if (is_float_dtype(ta->dtype))
        compare_floats(row, a, b, ta->dtype, o);
    else
        compare_exact(row, a, b, etm_st_dtype_size(ta->dtype));
    row->status = row->n_bad ? ETM_CMP_DIFFERS : ETM_CMP_OK;
    if (out) {
        print_row(out, row, o);
        if (row->is_mask && row->n_bad) report_flips(out, fa, fb, ta, a, b, layer, o->max_listed);
    }
    free(a);
    free(b);
    return 0;
}

int etm_dump_compare(const char *path_a, const char *path_b, const etm_compare_opts *o, FILE *out,
                     etm_compare_result *r, etm_error *err) {
    memset(r, 0, sizeof *r);
    etm_st_file *fa = etm_st_open(path_a, err);
    if (!fa) return -1;
    etm_st_file *fb = etm_st_open(path_b, err);
    if (!fb) {
        etm_st_close(fa);
        return -1;
    }
    int na = etm_st_count(fa), nb = etm_st_count(fb);
    r->rows = etm_calloc((size_t)(na + nb) + 1, sizeof(etm_compare_row));
    const char *cfg_a = etm_st_metadata(fa, "config"), *cfg_b = etm_st_metadata(fb, "config");
    r->config_differs = (cfg_a == NULL) != (cfg_b == NULL) || (cfg_a && strcmp(cfg_a, cfg_b));
    if (out) {
        fprintf(out, "A: %s\nB: %s\n", path_a, path_b);
        if (r->config_differs) fprintf(out, "note: the two files were made with different configurations\n");
        fprintf(out, "tolerance: |a - b| <= %g + %g max(|a|, |b|); routing disagreements allowed: %ld\n\n",
                o->atol, o->rtol, o->max_flips);
        fprintf(out, "%-36s %-9s %10s %10s %10s %21s %6s %6s\n", "tensor", "status", "max abs", "max rel",
                "norm err", "bad/elements", "NaN A", "NaN B");
    }
    int rc = 0;
    /* Both lists are sorted by name: walk them together. */
    for (int i = 0, j = 0; rc == 0 && (i < na || j < nb);) {
        const etm_st_tensor *ta = i < na ? etm_st_tensor_at(fa, i) : NULL;
        const etm_st_tensor *tb = j < nb ? etm_st_tensor_at(fb, j) : NULL;
        int c = !ta ? 1 : !tb ? -1 : strcmp(ta->name, tb->name);
        etm_compare_row *row = &r->rows[r->n_rows++];
        snprintf(row->name, sizeof row->name, "%s", c <= 0 ? ta->name : tb->name);
        if (c < 0) {
            row->status = ETM_CMP_ONLY_A;
            i++;
            if (out) print_row(out, row, o);
        } else if (c > 0) {
            row->status = ETM_CMP_ONLY_B;
            j++;
            if (out) print_row(out, row, o);
        } else {
            rc = compare_tensor(fa, fb, ta, tb, row, o, out, err);
            i++;
            j++;
        }
    }
    etm_st_close(fa);
    etm_st_close(fb);
    if (rc != 0) {
        etm_compare_result_free(r);
        return -1;
    }
    for (int i = 0; i < r->n_rows; i++) {
        const etm_compare_row *row = &r->rows[i];
        if (row->is_mask && row->status == ETM_CMP_DIFFERS)
            r->routing_flips += (long)row->n_bad;
        else if (row->status != ETM_CMP_OK)
            r->n_failed++;
    }
    int flips_over = r->routing_flips > o->max_flips;
    if (flips_over)
        for (int i = 0; i < r->n_rows; i++)
            if (r->rows[i].is_mask && r->rows[i].status == ETM_CMP_DIFFERS) r->n_failed++;
    if (out) {
        fprintf(out, "\n%d tensors compared, %d beyond tolerance; %ld routing disagreement%s (%ld allowed)\n",
                r->n_rows, r->n_failed, r->routing_flips, r->routing_flips == 1 ? "" : "s", o->max_flips);
        fprintf(out, "%s\n", r->n_failed ? "FAIL" : "PASS");
    }
    return r->n_failed ? 0 : 1;
}

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
