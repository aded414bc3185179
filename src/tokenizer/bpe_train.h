/* bpe_train.h: a byte-level BPE trainer that learns merges in GPT-2's format from text, with
 * GPT-2's pre-split (so merges never cross piece boundaries) and a deterministic tie rule.
 *
 * Each step merges the adjacent pair of tokens that occurs most often across the pieces (counted
 * at every adjacent position, weighted by how often the piece occurs). Ties go to the
 * pair that is lowest in byte order: compare the left tokens' bytes (as unsigned bytes, a prefix
 * before its extensions), then the right tokens'. A pair whose merged bytes already are a token
 * (possible when the same string can be built two ways) is skipped, so every token's bytes are
 * unique and the file reads back unambiguously. The result does not depend on the order in
 * which texts are added, nor on the thread count (it runs on one thread). */
#ifndef ETM_BPE_TRAIN_H
#define ETM_BPE_TRAIN_H

#include <stddef.h>

#include "common.h"
#include "tokenizer_merges.h"

typedef struct etm_bpe_trainer etm_bpe_trainer;

typedef struct {
    size_t pieces;        /* pre-split pieces seen (without <|endoftext|>) */
    size_t unique_pieces; /* distinct ones, the words training works on */
    size_t merges;        /* merges learned */
    size_t skipped;       /* pairs skipped because their bytes already were a token */
} etm_bpe_stats;

etm_bpe_trainer *etm_bpe_trainer_create(etm_error *err);
void etm_bpe_trainer_free(etm_bpe_trainer *tr);

/* Pre-splits text (any bytes) and counts its pieces; the literal <|endoftext|> separates
 * documents and is never learned. */
void etm_bpe_trainer_add(etm_bpe_trainer *tr, const char *text, size_t len);

/* Learns merges for a vocabulary of vocab_size = 256 bytes + merges + 1 end-of-text token.
 * Fewer merges result when the text runs out of pairs (stats->merges says how many). */
int etm_bpe_trainer_train(etm_bpe_trainer *tr, int vocab_size, etm_merges *out, etm_bpe_stats *stats,
                          etm_error *err);

#endif
