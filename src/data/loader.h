/* loader.h: micro-batches of token sequences from one or many shards (src/shard.h).
 *
 * The data is cut into windows of T+1 tokens at stride T inside each shard (a shard of n tokens
 * has floor((n - 1) / T) of them; windows never cross shards). The shards named by a glob are
 * taken in sorted order and their windows numbered globally. A batch is the next B windows:
 * inputs are each window's first T tokens, targets its last T (the inputs shifted by one).
 *
 * Training mode (shuffle = 1) visits the windows of each epoch in a fresh random order, a
 * permutation drawn from an RNG seeded by (seed, epoch) alone. Validation mode (shuffle = 0)
 * visits them in order from the start. Either way a batch that runs past the last window of an
 * epoch continues with the first windows of the next, so every window is used exactly once per
 * epoch and none is dropped.
 *
 * The position is three integers (epoch, index within the epoch, seed) plus the window count as a
 * check: a checkpoint saves them, and a loader given them back produces exactly the batches the
 * original would have produced next. */
#ifndef ETM_LOADER_H
#define ETM_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct etm_loader etm_loader;

typedef struct {
    uint64_t epoch;     /* epochs completed before the next window */
    uint64_t index;     /* the next window's place in this epoch's order, < n_windows */
    uint64_t seed;      /* the shuffle seed */
    uint64_t n_windows; /* windows in the data when saved; etm_loader_set_pos insists it matches */
} etm_loader_pos;

/* etm_loader_pos as int64s, for a checkpoint tensor: {epoch, index, seed, n_windows}. */
#define ETM_LOADER_POS_LEN 4
void etm_loader_pos_pack(const etm_loader_pos *pos, int64_t out[ETM_LOADER_POS_LEN]);
void etm_loader_pos_unpack(const int64_t in[ETM_LOADER_POS_LEN], etm_loader_pos *pos);

/* Opens every shard matching glob_pattern (POSIX glob, sorted by name). B, T >= 1. Tokens are
 * checked against vocab_size when batches are read (vocab_size <= 0: no check beyond int32). Fails
 * when nothing matches, a shard is invalid, or the shards hold no window of T+1 tokens. */
etm_loader *etm_loader_open(const char *glob_pattern, int B, int T, uint64_t seed, int shuffle,
                            int vocab_size, etm_error *err);
void etm_loader_free(etm_loader *ld);

/* Fills inputs and targets (B*T int32 each, row-major (B, T)) with the next batch and advances.
 * On error (a token outside the vocabulary, named by shard and offset) the position is unchanged. */
int etm_loader_next(etm_loader *ld, int32_t *inputs, int32_t *targets, etm_error *err);

/* Back to the first window of epoch 0 (validation passes start here each time). */
void etm_loader_reset(etm_loader *ld);

void etm_loader_get_pos(const etm_loader *ld, etm_loader_pos *pos);
/* Continues from pos (its seed replaces the loader's). Fails, leaving the loader unchanged, when
 * pos->n_windows differs from this data's window count or pos->index is out of range. */
int etm_loader_set_pos(etm_loader *ld, const etm_loader_pos *pos, etm_error *err);

size_t etm_loader_n_tokens(const etm_loader *ld);  /* all tokens in all shards */
uint64_t etm_loader_n_windows(const etm_loader *ld); /* windows per epoch */
int etm_loader_n_shards(const etm_loader *ld);
const char *etm_loader_shard_path(const etm_loader *ld, int i); /* in the order used */

#endif
