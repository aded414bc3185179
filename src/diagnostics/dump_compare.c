/* dump_compare.c: the tensor-by-tensor comparison of two dump files (dump.h; the file is
 * doc/dump-format.md). */
#include <config.h>

#include "dump.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "router.h"
#include "safetensors.h"

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
