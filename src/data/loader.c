/* loader.c: the batch loader: glob expansion, global window numbering over shards, the per-epoch
 * shuffle and the save/restore of positions. */
#include <config.h>

#include "loader.h"

#include "rng.h"
#include "shard.h"

#include <glob.h>
#include <stdlib.h>
#include <string.h>

struct etm_loader {
    int B, T;               /* batch size, sequence length */
    int shuffle;            /* 1: training order (shuffled per epoch), 0: validation order */
    int vocab_size;         /* tokens must be below it (<= 0: unchecked) */
    uint64_t seed;          /* shuffle seed */
    int n_shards;
    etm_shard **shards;     /* (n_shards) in sorted path order */
    uint64_t *first_window; /* (n_shards + 1) global number of each shard's first window; last = total */
    uint64_t n_windows;     /* windows per epoch */
    uint64_t n_tokens;      /* tokens in all shards */
    uint32_t *order;        /* (n_windows) window order of epoch order_epoch; NULL in validation mode */
    uint64_t order_epoch;   /* the epoch `order` was drawn for */
    int order_valid;        /* 0 until order is drawn, and after the seed changes */
    uint64_t epoch, index;  /* position of the next window */
    int32_t *window;        /* (T + 1) scratch */
};

void etm_loader_pos_pack(const etm_loader_pos *pos, int64_t out[ETM_LOADER_POS_LEN]) {
    uint64_t v[ETM_LOADER_POS_LEN] = {pos->epoch, pos->index, pos->seed, pos->n_windows};
    memcpy(out, v, sizeof v); /* same bits; a seed above INT64_MAX comes back unchanged */
}

void etm_loader_pos_unpack(const int64_t in[ETM_LOADER_POS_LEN], etm_loader_pos *pos) {
    uint64_t v[ETM_LOADER_POS_LEN];
    memcpy(v, in, sizeof v);
    pos->epoch = v[0];
    pos->index = v[1];
    pos->seed = v[2];
    pos->n_windows = v[3];
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int has_glob_chars(const char *s) { return strpbrk(s, "*?[") != NULL; }

void etm_loader_free(etm_loader *ld) {
    if (!ld) return;
    for (int i = 0; i < ld->n_shards; i++) etm_shard_free(ld->shards[i]);
    free(ld->shards);
    free(ld->first_window);
    free(ld->order);
    free(ld->window);
    free(ld);
}

etm_loader *etm_loader_open(const char *glob_pattern, int B, int T, uint64_t seed, int shuffle,
                            int vocab_size, etm_error *err) {
    if (B < 1 || T < 1) {
        etm_fail(err, "%s: batch size %d and sequence length %d must both be at least 1", glob_pattern, B, T);
        return NULL;
    }
    glob_t g;
    memset(&g, 0, sizeof g);
    int rc = glob(glob_pattern, 0, NULL, &g);
    if (rc != 0 || g.gl_pathc == 0) {
        if (rc == GLOB_NOMATCH || rc == 0)
            etm_fail(err, has_glob_chars(glob_pattern) ? "%s: no token shard matches this pattern"
                                                        : "%s: no such token shard",
                     glob_pattern);
        else
            etm_fail(err, "%s: cannot expand the shard pattern (%s)", glob_pattern,
                     rc == GLOB_NOSPACE ? "out of memory" : "read error");
        globfree(&g);
        return NULL;
    }
    if (g.gl_pathc > (size_t)INT32_MAX) {
        etm_fail(err, "%s: too many shards (%zu)", glob_pattern, (size_t)g.gl_pathc);
        globfree(&g);
        return NULL;
    }
    /* glob sorts by the locale's collation; byte order makes the order the same everywhere. */
    qsort(g.gl_pathv, g.gl_pathc, sizeof *g.gl_pathv, cmp_str);

    etm_loader *ld = etm_calloc(1, sizeof *ld);
    ld->B = B;
    ld->T = T;
    ld->shuffle = shuffle != 0;
    ld->vocab_size = vocab_size;
    ld->seed = seed;
    ld->shards = etm_calloc(g.gl_pathc, sizeof *ld->shards);
    ld->first_window = etm_calloc(g.gl_pathc + 1, sizeof *ld->first_window);
    ld->window = etm_malloc(((size_t)T + 1) * sizeof *ld->window);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        etm_shard *s = etm_shard_open(g.gl_pathv[i], ETM_SHARD_LOAD_AUTO, err);
        if (!s) {
            globfree(&g);
            etm_loader_free(ld);
            return NULL;
        }
        ld->shards[ld->n_shards++] = s;
        uint64_t n = etm_shard_n_tokens(s);
        ld->first_window[i] = ld->n_windows;
        ld->n_windows += n >= 1 ? (n - 1) / (uint64_t)T : 0;
        ld->n_tokens += n;
    }
    ld->first_window[ld->n_shards] = ld->n_windows;
    globfree(&g);

    if (ld->n_windows == 0) {
        etm_fail(err, "%s: the %d shard(s) hold %llu tokens in all, not one window of T+1 = %d tokens",
                 glob_pattern, ld->n_shards, (unsigned long long)ld->n_tokens, T + 1);
        etm_loader_free(ld);
        return NULL;
    }
    if (ld->shuffle) {
        if (ld->n_windows > UINT32_MAX) {
            etm_fail(err, "%s: %llu windows are too many to shuffle (at most %lu); use a longer T", glob_pattern,
                     (unsigned long long)ld->n_windows, (unsigned long)UINT32_MAX);
            etm_loader_free(ld);
            return NULL;
        }
        ld->order = etm_malloc(ld->n_windows * sizeof *ld->order);
    }
    return ld;
}

/* The epoch's generator depends only on (seed, epoch), so a position needs no RNG state. The epoch
 * goes through splitmix64's finaliser so that neighbouring epochs get unrelated streams. */
static void epoch_rng(etm_rng *rng, uint64_t seed, uint64_t epoch) {
    uint64_t z = epoch + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    etm_rng_seed(rng, seed ^ z);
}

static void ensure_order(etm_loader *ld) {
    if (ld->order_valid && ld->order_epoch == ld->epoch) return;
    for (uint64_t i = 0; i < ld->n_windows; i++) ld->order[i] = (uint32_t)i;
    etm_rng rng;
    epoch_rng(&rng, ld->seed, ld->epoch);
    etm_rng_shuffle_u32(&rng, ld->order, ld->n_windows);
    ld->order_epoch = ld->epoch;
    ld->order_valid = 1;
}

/* The shard holding global window w: the last shard whose first window is <= w. A shard without
 * windows shares its first_window with the next shard, so it is never the last such one. */
static int shard_of_window(const etm_loader *ld, uint64_t w) {
    int lo = 0, hi = ld->n_shards - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (ld->first_window[mid] <= w) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

int etm_loader_next(etm_loader *ld, int32_t *inputs, int32_t *targets, etm_error *err) {
    const uint64_t epoch0 = ld->epoch, index0 = ld->index;
    const size_t T = (size_t)ld->T;
    for (int b = 0; b < ld->B; b++) {
        uint64_t w = ld->index;
        if (ld->shuffle) {
            ensure_order(ld);
            w = ld->order[ld->index];
        }
        int si = shard_of_window(ld, w);
        uint64_t start = (w - ld->first_window[si]) * (uint64_t)ld->T;
        if (etm_shard_read(ld->shards[si], start, T + 1, ld->vocab_size, ld->window, err) != 0) {
            ld->epoch = epoch0;
            ld->index = index0;
            return -1;
        }
        memcpy(inputs + (size_t)b * T, ld->window, T * sizeof *inputs);
        memcpy(targets + (size_t)b * T, ld->window + 1, T * sizeof *targets);
        if (++ld->index == ld->n_windows) {
            ld->epoch++;
            ld->index = 0;
        }
    }
    return 0;
}

void etm_loader_reset(etm_loader *ld) {
    ld->epoch = 0;
    ld->index = 0;
}

void etm_loader_get_pos(const etm_loader *ld, etm_loader_pos *pos) {
    pos->epoch = ld->epoch;
    pos->index = ld->index;
    pos->seed = ld->seed;
    pos->n_windows = ld->n_windows;
}

int etm_loader_set_pos(etm_loader *ld, const etm_loader_pos *pos, etm_error *err) {
    const char *first = etm_shard_path(ld->shards[0]);
    if (pos->n_windows != ld->n_windows)
        return etm_fail(err,
                        "%s...: the saved data position is for %llu windows, but these %d shard(s) with T = %d "
                        "hold %llu: the data or T has changed",
                        first, (unsigned long long)pos->n_windows, ld->n_shards, ld->T,
                        (unsigned long long)ld->n_windows);
    if (pos->epoch > (uint64_t)INT64_MAX)
        return etm_fail(err, "%s...: saved epoch %lld is negative", first, (long long)(int64_t)pos->epoch);
    if (pos->index >= ld->n_windows)
        return etm_fail(err, "%s...: saved window index %llu is out of range (expected below %llu)", first,
                        (unsigned long long)pos->index, (unsigned long long)ld->n_windows);
    if (pos->seed != ld->seed) ld->order_valid = 0;
    ld->seed = pos->seed;
    ld->epoch = pos->epoch;
    ld->index = pos->index;
    return 0;
}

size_t etm_loader_n_tokens(const etm_loader *ld) { return (size_t)ld->n_tokens; }
uint64_t etm_loader_n_windows(const etm_loader *ld) { return ld->n_windows; }
int etm_loader_n_shards(const etm_loader *ld) { return ld->n_shards; }
const char *etm_loader_shard_path(const etm_loader *ld, int i) { return etm_shard_path(ld->shards[i]); }
