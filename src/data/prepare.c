/* prepare.c: tokenizes text files and writes them as train and validation token shards. */
#include <config.h>

#include "prepare.h"

#include "shard.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_SHARDS 1000000 /* six digits in the names */

void etm_prepare_defaults(etm_prepare_opts *opts) {
    memset(opts, 0, sizeof *opts);
    opts->val_fraction = ETM_PREPARE_VAL_FRACTION;
    opts->shard_tokens = ETM_PREPARE_SHARD_TOKENS;
}

void etm_prepare_shard_path(char *buf, size_t len, const char *dir, const char *split, int i) {
    snprintf(buf, len, "%s/%s_%06d.bin", dir, split, i);
}

/* One output stream ("train" or "val"): tokens gather in buf until a shard is full. */
typedef struct {
    const char *dir;
    const char *split;   /* "train" or "val" */
    uint64_t cap;        /* tokens per shard */
    int32_t *buf;        /* (buf_cap) pending tokens */
    size_t n, buf_cap;   /* pending count, allocated count */
    int n_shards;        /* shards written so far */
    uint64_t total;      /* tokens taken so far */
} sink;

static int sink_flush(sink *s, etm_error *err) {
    if (s->n == 0) return 0;
    if (s->n_shards >= MAX_SHARDS)
        return etm_fail(err, "%s: more than %d %s shards; use a larger --shard-tokens", s->dir, MAX_SHARDS,
                        s->split);
    char path[4096];
    etm_prepare_shard_path(path, sizeof path, s->dir, s->split, s->n_shards);
    if (etm_shard_write(path, s->buf, s->n, err) != 0) return -1;
    s->n_shards++;
    s->n = 0;
    return 0;
}

static int sink_add(sink *s, const int32_t *tok, size_t n, etm_error *err) {
    s->total += n;
    while (n > 0) {
        size_t room = (size_t)(s->cap - s->n);
        size_t take = ETM_MIN(room, n);
        if (s->n + take > s->buf_cap) {
            /* Grow geometrically, never past one shard: small corpora stay small in memory. */
            size_t want = ETM_MAX(s->n + take, 2 * s->buf_cap);
            s->buf_cap = (size_t)ETM_MIN((uint64_t)want, s->cap);
            s->buf = etm_realloc(s->buf, s->buf_cap * sizeof *s->buf);
        }
        memcpy(s->buf + s->n, tok, take * sizeof *tok);
        s->n += take;
        tok += take;
        n -= take;
        if (s->n == s->cap && sink_flush(s, err) != 0) return -1;
    }
    return 0;
}

/* A document part: EOT, then tokens. */
static int sink_add_document(sink *s, int32_t eot, const int32_t *tok, size_t n, etm_error *err) {
    if (sink_add(s, &eot, 1, err) != 0) return -1;
    return sink_add(s, tok, n, err);
}

/* If name is SPLIT_NNNNNN.bin, returns NNNNNN, else -1. */
static int shard_index(const char *name, const char *split) {
    size_t k = strlen(split);
    if (strncmp(name, split, k) != 0 || name[k] != '_') return -1;
    const char *d = name + k + 1;
    int v = 0;
    for (int i = 0; i < 6; i++) {
        if (d[i] < '0' || d[i] > '9') return -1;
        v = v * 10 + (d[i] - '0');
    }
    return strcmp(d + 6, ".bin") == 0 ? v : -1;
}

/* The largest index + 1 of existing shards of each split (0 when none), and one example name. */
static int existing_shards(const char *dir, int *n_train, int *n_val, char *example, size_t len,
                           etm_error *err) {
    *n_train = *n_val = 0;
    example[0] = '\0';
    DIR *d = opendir(dir);
    if (!d) return etm_fail(err, "%s: cannot read the output directory: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int t = shard_index(e->d_name, "train"), v = shard_index(e->d_name, "val");
        if (t >= 0) *n_train = ETM_MAX(*n_train, t + 1);
        if (v >= 0) *n_val = ETM_MAX(*n_val, v + 1);
        if ((t >= 0 || v >= 0) && !example[0]) snprintf(example, len, "%s", e->d_name);
    }
    closedir(d);
    return 0;
}

/* Removes split shards numbered from `from` up to `upto` (exclusive): leftovers of an earlier,
 * larger run that a glob would otherwise mix into the new data. */
static int remove_stale(const char *dir, const char *split, int from, int upto, etm_error *err) {
    for (int i = from; i < upto; i++) {
        char path[4096];
        etm_prepare_shard_path(path, sizeof path, dir, split, i);
        if (remove(path) != 0 && errno != ENOENT)
            return etm_fail(err, "%s: cannot remove a stale shard: %s", path, strerror(errno));
    }
    return 0;
}

int etm_prepare(const etm_tokenizer *tok, const char *const *files, int n_files, const char *out_dir,
                const etm_prepare_opts *opts, etm_prepare_stats *stats, etm_error *err) {
    memset(stats, 0, sizeof *stats);
    if (!(opts->val_fraction >= 0.0 && opts->val_fraction < 1.0))
        return etm_fail(err, "validation fraction %g is outside [0, 1)", opts->val_fraction);
    if (opts->shard_tokens < 1 || opts->shard_tokens > ETM_SHARD_MAX_TOKENS)
        return etm_fail(err, "%llu tokens per shard is outside [1, %llu]", (unsigned long long)opts->shard_tokens,
                        (unsigned long long)ETM_SHARD_MAX_TOKENS);
    if (n_files < 1) return etm_fail(err, "no input files");
    if (etm_mkdir_p(out_dir, err) != 0) return -1;
    int old_train = 0, old_val = 0;
    char example[512];
    if (existing_shards(out_dir, &old_train, &old_val, example, sizeof example, err) != 0) return -1;
    if ((old_train || old_val) && !opts->force)
        return etm_fail(err, "%s: already holds token shards (%s, ...); remove them or pass --force to replace them",
                        out_dir, example);

    const int32_t eot = etm_tokenizer_eot(tok);
    sink train = {out_dir, "train", opts->shard_tokens, NULL, 0, 0, 0, 0};
    sink val = {out_dir, "val", opts->shard_tokens, NULL, 0, 0, 0, 0};
    int rc = 0;
    for (int f = 0; f < n_files && rc == 0; f++) {
        size_t len = 0;
        char *text = etm_read_file(files[f], &len, err);
        if (!text) {
            rc = -1;
            break;
        }
        size_t n = 0;
        int32_t *ids = etm_tokenizer_encode(tok, text, len, &n);
        free(text);
        if (!ids && n > 0) {
            rc = etm_fail(err, "%s: tokenization failed", files[f]);
            break;
        }
        size_t n_val = (size_t)floor(opts->val_fraction * (double)n + 0.5);
        size_t n_train = n - n_val;
        uint64_t train0 = train.total, val0 = val.total;
        rc = sink_add_document(&train, eot, ids, n_train, err);
        if (rc == 0 && n_val > 0) rc = sink_add_document(&val, eot, ids + n_train, n_val, err);
        free(ids);
        if (rc == 0) {
            stats->n_files++;
            if (opts->on_file) opts->on_file(opts->ctx, files[f], train.total - train0, val.total - val0);
        }
    }
    if (rc == 0) rc = sink_flush(&train, err);
    if (rc == 0) rc = sink_flush(&val, err);
    free(train.buf);
    free(val.buf);
    if (rc != 0) return -1;
    stats->train_tokens = train.total;
    stats->val_tokens = val.total;
    stats->n_train_shards = train.n_shards;
    stats->n_val_shards = val.n_shards;
    if (remove_stale(out_dir, "train", train.n_shards, old_train, err) != 0) return -1;
    return remove_stale(out_dir, "val", val.n_shards, old_val, err);
}
