/* safetensors.c: the safetensors writer (deterministic bytes, atomic) and validating reader. The
 * JSON header goes through Jansson; tensor data is streamed, little-endian on any host. */
#include <config.h>

#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[ETM_ST_N_DTYPES] = {
    [ETM_ST_BOOL] = {"BOOL", 1},       [ETM_ST_U8] = {"U8", 1},     [ETM_ST_I8] = {"I8", 1},
    [ETM_ST_F8_E5M2] = {"F8_E5M2", 1}, [ETM_ST_F8_E4M3] = {"F8_E4M3", 1},
    [ETM_ST_I16] = {"I16", 2},         [ETM_ST_U16] = {"U16", 2},   [ETM_ST_F16] = {"F16", 2},
    [ETM_ST_BF16] = {"BF16", 2},       [ETM_ST_I32] = {"I32", 4},   [ETM_ST_U32] = {"U32", 4},
    [ETM_ST_F32] = {"F32", 4},         [ETM_ST_I64] = {"I64", 8},   [ETM_ST_U64] = {"U64", 8},
    [ETM_ST_F64] = {"F64", 8},
};

const char *etm_st_dtype_name(etm_st_dtype dtype) {
    return (unsigned)dtype < ETM_ST_N_DTYPES ? dtypes[dtype].name : "(invalid dtype)";
}

size_t etm_st_dtype_size(etm_st_dtype dtype) {
    return (unsigned)dtype < ETM_ST_N_DTYPES ? dtypes[dtype].size : 0;
}

const char *etm_st_shape_string(int ndim, const int64_t *shape, char *buf, size_t len) {
    size_t n = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < len) snprintf(buf + n, len - n, ")");
    return buf;
}

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Reverses the bytes of each elem-byte element of buf (little-endian <-> big-endian). */
static void swap_elements(unsigned char *buf, size_t bytes, size_t elem) {
    if (elem < 2) return;
    for (size_t i = 0; i + elem <= bytes; i += elem)
        for (size_t a = 0, b = elem - 1; a < b; a++, b--) {
            unsigned char t = buf[i + a];
            buf[i + a] = buf[i + b];
            buf[i + b] = t;
        }
}

/* Bytes of a tensor, or -1 on overflow. */
static int tensor_bytes(etm_st_dtype dtype, int ndim, const int64_t *shape, uint64_t *bytes) {
    uint64_t n = etm_st_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d && n > UINT64_MAX / d) return -1;
        n *= d;
    }
    *bytes = n;
    return 0;
}

/* ---- writer ---------------------------------------------------------------------------------- */

typedef struct {
    char *name;
    etm_st_dtype dtype;
    int ndim;
    int64_t shape[ETM_ST_MAX_DIMS];
    uint64_t bytes;
    const void *data; /* borrowed, or owned when owned != NULL */
    void *owned;
} writer_tensor;

typedef struct {
    char *key, *value;
} meta_entry;

struct etm_st_writer {
    writer_tensor *tensors; /* (n_tensors) in the order added */
    int n_tensors, cap_tensors;
    meta_entry *meta;       /* (n_meta) */
    int n_meta, cap_meta;
};

etm_st_writer *etm_st_writer_create(void) { return etm_calloc(1, sizeof(etm_st_writer)); }

void etm_st_writer_free(etm_st_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].owned);
    }
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->tensors);
    free(w->meta);
    free(w);
}

static int add_tensor(etm_st_writer *w, const char *name, etm_st_dtype dtype, int ndim,
                      const int64_t *shape, const void *data, void *owned, etm_error *err) {
    if (!name || !*name) return etm_fail(err, "safetensors: a tensor needs a name");
    if (!strcmp(name, "__metadata__"))
        return etm_fail(err, "safetensors: '__metadata__' is reserved, not a tensor name");
    if ((unsigned)dtype >= ETM_ST_N_DTYPES)
        return etm_fail(err, "safetensors: tensor '%s': invalid dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > ETM_ST_MAX_DIMS)
        return etm_fail(err, "safetensors: tensor '%s': %d dimensions (0 to %d allowed)", name, ndim,
                        ETM_ST_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return etm_fail(err, "safetensors: tensor '%s': dimension %d is %lld", name, i,
                            (long long)shape[i]);
    uint64_t bytes;
    if (tensor_bytes(dtype, ndim, shape, &bytes) != 0)
        return etm_fail(err, "safetensors: tensor '%s': the size overflows", name);
    if (bytes && !data) return etm_fail(err, "safetensors: tensor '%s': no data", name);
    for (int i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return etm_fail(err, "safetensors: tensor '%s' added twice", name);
    if (w->n_tensors == w->cap_tensors) {
        w->cap_tensors = w->cap_tensors ? 2 * w->cap_tensors : 16;
        w->tensors = etm_realloc(w->tensors, (size_t)w->cap_tensors * sizeof *w->tensors);
    }
    writer_tensor *t = &w->tensors[w->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = etm_strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->bytes = bytes;
    t->data = data;
    t->owned = owned;
    return 0;
}

int etm_st_add(etm_st_writer *w, const char *name, etm_st_dtype dtype, int ndim,
               const int64_t *shape, const void *data, etm_error *err) {
    return add_tensor(w, name, dtype, ndim, shape, data, NULL, err);
}

int etm_st_add_owned(etm_st_writer *w, const char *name, etm_st_dtype dtype, int ndim,
                     const int64_t *shape, void *data, etm_error *err) {
    int rc = add_tensor(w, name, dtype, ndim, shape, data, data, err);
    if (rc != 0) free(data);
    return rc;
}

int etm_st_add_copy(etm_st_writer *w, const char *name, etm_st_dtype dtype, int ndim,
                    const int64_t *shape, const void *data, etm_error *err) {
    /* Copy only what add_tensor will accept; for anything else it reports the problem. */
    int ok = (unsigned)dtype < ETM_ST_N_DTYPES && ndim >= 0 && ndim <= ETM_ST_MAX_DIMS && data;
    for (int i = 0; ok && i < ndim; i++) ok = shape[i] >= 0;
    uint64_t bytes = 0;
    if (ok) ok = tensor_bytes(dtype, ndim, shape, &bytes) == 0 && bytes > 0 && bytes <= SIZE_MAX;
    if (!ok) return add_tensor(w, name, dtype, ndim, shape, data, NULL, err);
    void *copy = etm_malloc((size_t)bytes);
    memcpy(copy, data, (size_t)bytes);
    return etm_st_add_owned(w, name, dtype, ndim, shape, copy, err);
}

int etm_st_set_metadata(etm_st_writer *w, const char *key, const char *value, etm_error *err) {
    if (!key || !value) return etm_fail(err, "safetensors: metadata needs a key and a value");
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[i].key, key)) {
            free(w->meta[i].value);
            w->meta[i].value = etm_strdup(value);
            return 0;
        }
    if (w->n_meta == w->cap_meta) {
        w->cap_meta = w->cap_meta ? 2 * w->cap_meta : 8;
        w->meta = etm_realloc(w->meta, (size_t)w->cap_meta * sizeof *w->meta);
    }
    w->meta[w->n_meta].key = etm_strdup(key);
    w->meta[w->n_meta].value = etm_strdup(value);
    w->n_meta++;
    return 0;
}

static int cmp_writer_tensor(const void *a, const void *b) {
    return strcmp(((const writer_tensor *)a)->name, ((const writer_tensor *)b)->name);
}

static int cmp_meta(const void *a, const void *b) {
    return strcmp(((const meta_entry *)a)->key, ((const meta_entry *)b)->key);
}

/* The JSON header (without padding), or NULL with a message (a name that is not UTF-8). */
static char *build_header(etm_st_writer *w, const char *path, etm_error *err) {
    json_t *root = json_object();
    char *text = NULL;
    if (w->n_meta) {
        json_t *meta = json_object();
        json_object_set_new(root, "__metadata__", meta);
        for (int i = 0; i < w->n_meta; i++) {
            json_t *v = json_string(w->meta[i].value);
            if (!v || json_object_set_new(meta, w->meta[i].key, v) != 0) {
                etm_fail(err, "%s: metadata '%s': key or value is not valid UTF-8", path, w->meta[i].key);
                goto done;
            }
        }
    }
    uint64_t offset = 0;
    for (int i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        json_t *entry = json_object(), *shape = json_array(), *offsets = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
        json_array_append_new(offsets, json_integer((json_int_t)offset));
        json_array_append_new(offsets, json_integer((json_int_t)(offset + t->bytes)));
        offset += t->bytes;
        json_object_set_new(entry, "dtype", json_string(etm_st_dtype_name(t->dtype)));
        json_object_set_new(entry, "shape", shape);
        json_object_set_new(entry, "data_offsets", offsets);
        if (json_object_set_new(root, t->name, entry) != 0) {
            etm_fail(err, "%s: tensor name '%s' is not valid UTF-8", path, t->name);
            goto done;
        }
    }
    /* Jansson keeps insertion order; JSON_PRESERVE_ORDER says so for versions before 2.8. */
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) etm_fail(err, "%s: cannot encode the header", path);
done:
    json_decref(root);
    return text;
}

int etm_st_write(etm_st_writer *w, const char *path, etm_error *err) {
    /* qsort's array may not be NULL even when empty (C99 7.20.5), and an empty writer's are. */
    if (w->n_tensors > 0) qsort(w->tensors, (size_t)w->n_tensors, sizeof *w->tensors, cmp_writer_tensor);
    if (w->n_meta > 0) qsort(w->meta, (size_t)w->n_meta, sizeof *w->meta, cmp_meta);
    char *json = build_header(w, path, err);
    if (!json) return -1;
    size_t n = strlen(json);
    size_t padded = (n + 7) / 8 * 8;
    unsigned char len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (unsigned char)((uint64_t)padded >> (8 * i));

    char tmp[4096];
    FILE *f = etm_open_atomic(path, tmp, sizeof tmp, err);
    if (!f) {
        free(json);
        return -1;
    }
    int bad = fwrite(len_le, 1, 8, f) != 8 || fwrite(json, 1, n, f) != n;
    for (size_t i = n; i < padded && !bad; i++) bad = fputc(' ', f) == EOF;
    free(json);
    const int swap = !host_is_little_endian();
    unsigned char chunk[1 << 16];
    for (int i = 0; i < w->n_tensors && !bad; i++) {
        const writer_tensor *t = &w->tensors[i];
        const size_t elem = etm_st_dtype_size(t->dtype);
        if (!swap || elem == 1) {
            bad = t->bytes && fwrite(t->data, 1, (size_t)t->bytes, f) != t->bytes;
            continue;
        }
        for (uint64_t o = 0; o < t->bytes && !bad; o += sizeof chunk) {
            size_t m = (size_t)ETM_MIN((uint64_t)sizeof chunk, t->bytes - o);
            memcpy(chunk, (const unsigned char *)t->data + o, m);
            swap_elements(chunk, m, elem);
            bad = fwrite(chunk, 1, m, f) != m;
        }
    }
    if (bad) {
        fclose(f);
        remove(tmp);
        return etm_fail(err, "%s: write failed (disk full?); the previous file is untouched", path);
    }
    return etm_commit_atomic(f, tmp, path, err);
}

/* ---- reader ---------------------------------------------------------------------------------- */

struct etm_st_file {
    char *path;
    FILE *fp;
    uint64_t data_start;    /* 8 + header length */
    uint64_t data_size;     /* bytes of the data section */
    etm_st_tensor *tensors; /* (n) sorted by name; names owned */
    int n;
    meta_entry *meta;       /* (n_meta) */
    int n_meta;
};

void etm_st_close(etm_st_file *f) {
    if (!f) return;
    if (f->fp) fclose(f->fp);
    for (int i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta[i].key);
        free(f->meta[i].value);
    }
    free(f->tensors);
    free(f->meta);
    free(f->path);
    free(f);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const etm_st_tensor *)a)->name, ((const etm_st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const etm_st_tensor *x = *(const etm_st_tensor *const *)a, *y = *(const etm_st_tensor *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A JSON integer in [0, 2^63), or -1. */
static int64_t json_nonneg(const json_t *v) {
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    return x < 0 ? -1 : (int64_t)x;
}

/* Fills t from one header entry; errors name the file and the tensor. */
static int parse_entry(const char *path, const char *name, json_t *entry, uint64_t data_size,
                       etm_st_tensor *t, etm_error *err) {
    if (!json_is_object(entry)) return etm_fail(err, "%s: tensor '%s': the entry is not an object", path, name);
    const char *key;
    json_t *value;
    json_object_foreach(entry, key, value) {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return etm_fail(err, "%s: tensor '%s': unexpected field '%s'", path, name, key);
    }
    json_t *dtype = json_object_get(entry, "dtype");
    json_t *shape = json_object_get(entry, "shape");
    json_t *offsets = json_object_get(entry, "data_offsets");
    if (!json_is_string(dtype)) return etm_fail(err, "%s: tensor '%s': no dtype string", path, name);
    int found = -1;
    for (int i = 0; i < ETM_ST_N_DTYPES; i++)
        if (!strcmp(dtypes[i].name, json_string_value(dtype))) found = i;
    if (found < 0)
        return etm_fail(err, "%s: tensor '%s': unknown dtype '%s'", path, name, json_string_value(dtype));
    t->dtype = (etm_st_dtype)found;
    if (!json_is_array(shape)) return etm_fail(err, "%s: tensor '%s': no shape array", path, name);
    if (json_array_size(shape) > ETM_ST_MAX_DIMS)
        return etm_fail(err, "%s: tensor '%s': %zu dimensions (at most %d)", path, name,
                        json_array_size(shape), ETM_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    for (int i = 0; i < t->ndim; i++) {
        int64_t d = json_nonneg(json_array_get(shape, (size_t)i));
        if (d < 0) return etm_fail(err, "%s: tensor '%s': shape[%d] is not an integer >= 0", path, name, i);
        t->shape[i] = d;
    }
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return etm_fail(err, "%s: tensor '%s': data_offsets is not a pair [begin, end]", path, name);
    int64_t begin = json_nonneg(json_array_get(offsets, 0)), end = json_nonneg(json_array_get(offsets, 1));
    if (begin < 0 || end < 0)
        return etm_fail(err, "%s: tensor '%s': data_offsets are not integers >= 0", path, name);
    if (end < begin)
        return etm_fail(err, "%s: tensor '%s': data_offsets [%lld, %lld] end before they begin", path,
                        name, (long long)begin, (long long)end);
    t->begin = (uint64_t)begin;
    t->end = (uint64_t)end;
    uint64_t bytes;
    char sh[256];
    if (tensor_bytes(t->dtype, t->ndim, t->shape, &bytes) != 0)
        return etm_fail(err, "%s: tensor '%s': shape %s overflows", path, name,
                        etm_st_shape_string(t->ndim, t->shape, sh, sizeof sh));
    if (bytes != t->end - t->begin)
        return etm_fail(err,
                        "%s: tensor '%s': shape %s of %s needs %llu bytes but data_offsets [%llu, %llu] "
                        "hold %llu",
                        path, name, etm_st_shape_string(t->ndim, t->shape, sh, sizeof sh),
                        dtypes[t->dtype].name, (unsigned long long)bytes, (unsigned long long)t->begin,
                        (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
    if (t->end > data_size)
        return etm_fail(err,
                        "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the data "
                        "(%llu bytes)",
                        path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                        (unsigned long long)data_size);
    return 0;
}

/* Checks that the tensors tile the data section exactly, in offset order. */
static int check_coverage(etm_st_file *f, etm_error *err) {
    etm_st_tensor **order = etm_malloc((size_t)(f->n ? f->n : 1) * sizeof *order);
    for (int i = 0; i < f->n; i++) order[i] = &f->tensors[i];
    qsort(order, (size_t)f->n, sizeof *order, cmp_tensor_offset);
    uint64_t cursor = 0;
    const etm_st_tensor *last = NULL; /* the tensor that ends at cursor */
    int rc = 0;
    for (int i = 0; i < f->n && rc == 0; i++) {
        const etm_st_tensor *t = order[i];
        if (t->begin < cursor)
            rc = etm_fail(err, "%s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", f->path,
                          last->name, (unsigned long long)last->begin, (unsigned long long)last->end,
                          t->name, (unsigned long long)t->begin, (unsigned long long)t->end);
        else if (t->begin > cursor)
            rc = etm_fail(err, "%s: bytes [%llu, %llu) of the data belong to no tensor (before '%s')",
                          f->path, (unsigned long long)cursor, (unsigned long long)t->begin, t->name);
        else if (t->end > t->begin || !last) {
            cursor = t->end;
            last = t;
        }
    }
    if (rc == 0 && cursor != f->data_size)
        rc = etm_fail(err, "%s: the last %llu bytes of the data belong to no tensor", f->path,
                      (unsigned long long)(f->data_size - cursor));
    free(order);
    return rc;
}

static int parse_header(etm_st_file *f, const char *text, size_t len, etm_error *err) {
    if (len == 0 || text[0] != '{')
        return etm_fail(err, "%s: not a safetensors file (the header does not start with '{')", f->path);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return etm_fail(err, "%s: not a safetensors file (the header is not valid JSON: %s, header line %d, column %d)", f->path,
                        jerr.text, jerr.line, jerr.column);
    int rc = 0;
    if (!json_is_object(root)) {
        json_decref(root);
        return etm_fail(err, "%s: the header is not a JSON object", f->path);
    }
    size_t n = json_object_size(root);
    f->tensors = etm_calloc(n ? n : 1, sizeof *f->tensors);
    const char *name;
    json_t *entry;
    json_object_foreach(root, name, entry) {
        if (!strcmp(name, "__metadata__")) {
            if (!json_is_object(entry)) {
                rc = etm_fail(err, "%s: __metadata__ is not an object", f->path);
                break;
            }
            f->meta = etm_calloc(json_object_size(entry) + 1, sizeof *f->meta);
            const char *k;
            json_t *v;
            json_object_foreach(entry, k, v) {
                if (!json_is_string(v)) {
                    rc = etm_fail(err, "%s: __metadata__ '%s' is not a string", f->path, k);
                    break;
                }
                f->meta[f->n_meta].key = etm_strdup(k);
                f->meta[f->n_meta].value = etm_strdup(json_string_value(v));
                f->n_meta++;
            }
            if (rc) break;
            continue;
        }
        etm_st_tensor *t = &f->tensors[f->n];
        rc = parse_entry(f->path, name, entry, f->data_size, t, err);
        if (rc) break;
        t->name = etm_strdup(name);
        f->n++;
    }
    json_decref(root);
    if (rc) return rc;
    if (f->n > 0) qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_tensor_name);
    return check_coverage(f, err);
}

etm_st_file *etm_st_open(const char *path, etm_error *err) {
    etm_st_file *f = etm_calloc(1, sizeof *f);
    f->path = etm_strdup(path);
    char *header = NULL;
    uint64_t file_size = 0;
    f->fp = etm_fopen_regular(path, "safetensors", &file_size, err);
    if (!f->fp) goto fail;
    if (file_size > (uint64_t)INT64_MAX) {
        etm_fail(err, "%s: %llu bytes: too large", path, (unsigned long long)file_size);
        goto fail;
    }
    int64_t size = (int64_t)file_size;
    if (size < 8) {
        etm_fail(err, "%s: not a safetensors file (%lld bytes, too short: at least 8)", path, (long long)size);
        goto fail;
    }
    unsigned char len_le[8];
    if (fread(len_le, 1, 8, f->fp) != 8) {
        etm_fail(err, "%s: read error", path);
        goto fail;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len_le[i];
    if (hlen > (uint64_t)size - 8) {
        etm_fail(err, "%s: not a safetensors file (the header length %llu runs past the end of the file of %lld bytes)", path,
                 (unsigned long long)hlen, (long long)size);
        goto fail;
    }
    if (hlen > ETM_ST_MAX_HEADER) {
        etm_fail(err, "%s: the header length %llu is over the limit of %llu bytes", path,
                 (unsigned long long)hlen, (unsigned long long)ETM_ST_MAX_HEADER);
        goto fail;
    }
    header = etm_malloc((size_t)hlen + 1);
    if (fread(header, 1, (size_t)hlen, f->fp) != hlen) {
        etm_fail(err, "%s: read error in the header", path);
        goto fail;
    }
    header[hlen] = '\0';
    f->data_start = 8 + hlen;
    f->data_size = (uint64_t)size - f->data_start;
    if (parse_header(f, header, (size_t)hlen, err) != 0) goto fail;
    free(header);
    return f;
fail:
    free(header);
    etm_st_close(f);
    return NULL;
}

const char *etm_st_path(const etm_st_file *f) { return f->path; }
int etm_st_count(const etm_st_file *f) { return f->n; }

const etm_st_tensor *etm_st_tensor_at(const etm_st_file *f, int i) {
    return i >= 0 && i < f->n ? &f->tensors[i] : NULL;
}

const etm_st_tensor *etm_st_find(const etm_st_file *f, const char *name) {
    etm_st_tensor key;
    key.name = name;
    return bsearch(&key, f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_tensor_name);
}

const char *etm_st_metadata(const etm_st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[i].key, key)) return f->meta[i].value;
    return NULL;
}

int etm_st_read(etm_st_file *f, const char *name, etm_st_dtype dtype, int ndim,
                const int64_t *shape, void *dst, etm_error *err) {
    const etm_st_tensor *t = etm_st_find(f, name);
    if (!t) return etm_fail(err, "%s: no tensor '%s'", f->path, name);
    if (t->dtype != dtype)
        return etm_fail(err, "%s: tensor '%s' is %s, expected %s", f->path, name,
                        etm_st_dtype_name(t->dtype), etm_st_dtype_name(dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[256], b[256];
        return etm_fail(err, "%s: tensor '%s' has shape %s, expected %s", f->path, name,
                        etm_st_shape_string(t->ndim, t->shape, a, sizeof a),
                        etm_st_shape_string(ndim, shape, b, sizeof b));
    }
    uint64_t bytes = t->end - t->begin;
    if (bytes == 0) return 0;
    if (bytes > SIZE_MAX) return etm_fail(err, "%s: tensor '%s' is too large for memory", f->path, name);
    if (fseeko(f->fp, (off_t)(f->data_start + t->begin), SEEK_SET) != 0 ||
        fread(dst, 1, (size_t)bytes, f->fp) != bytes)
        return etm_fail(err, "%s: tensor '%s': read failed (did the file change since it was opened?)",
                        f->path, name);
    if (!host_is_little_endian()) swap_elements(dst, (size_t)bytes, etm_st_dtype_size(dtype));
    return 0;
}
