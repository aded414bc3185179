/* prepare.h: text files to token shards, the library side of `etmoe prepare`.
 *
 * Each file is one document. Its tokens are split in two: the first (1 - F) go to training, the
 * last F to validation, so every document is in both sets and validation text is never trained on.
 * Each part is written after an <|endoftext|> token (as llm.c starts every document), giving two
 * streams of EOT-separated documents, in the order the files were given. The streams are cut into
 * shards of at most shard_tokens tokens: OUT/train_000000.bin, ... and OUT/val_000000.bin, ... */
#ifndef ETM_PREPARE_H
#define ETM_PREPARE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "tokenizer.h"

#define ETM_PREPARE_VAL_FRACTION 0.1
#define ETM_PREPARE_SHARD_TOKENS 100000000ull /* as llm.c's FineWeb shards */

typedef struct {
    double val_fraction;   /* share of each document's tokens (its end) for validation, in [0, 1) */
    uint64_t shard_tokens; /* tokens per shard file, at most; 1 to ETM_SHARD_MAX_TOKENS */
    int force;             /* replace shards already in the directory (and remove stale ones) */
    /* Called after each file, when non-NULL: its path and its tokens in each set, EOTs included. */
    void (*on_file)(void *ctx, const char *path, uint64_t train_tokens, uint64_t val_tokens);
    void *ctx; /* passed to on_file */
} etm_prepare_opts;

typedef struct {
    int n_files;
    uint64_t train_tokens, val_tokens; /* EOTs included */
    int n_train_shards, n_val_shards;  /* files written: train_000000.bin ... */
} etm_prepare_stats;

void etm_prepare_defaults(etm_prepare_opts *opts);

/* Tokenizes files[0..n_files) into shards in out_dir (created if missing; its parent must exist).
 * Refuses a directory that already holds train_NNNNNN.bin or val_NNNNNN.bin unless opts->force.
 * Each shard is written atomically. */
int etm_prepare(const etm_tokenizer *tok, const char *const *files, int n_files, const char *out_dir,
                const etm_prepare_opts *opts, etm_prepare_stats *stats, etm_error *err);

/* DIR/SPLIT_NNNNNN.bin, the name of shard i of split "train" or "val". */
void etm_prepare_shard_path(char *buf, size_t len, const char *dir, const char *split, int i);

#endif
