/* tokenizer.h: byte-level BPE tokenizers in GPT-2's format (a merges file, "#version" header,
 * one "A B" pair per line, tokens 0-255 the bytes in GPT-2's bytes-to-unicode order), with
 * GPT-2's pre-split regex and <|endoftext|> as the id after the last merge. */
#ifndef ETM_TOKENIZER_H
#define ETM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

typedef struct etm_tokenizer etm_tokenizer;

/* Loads a merges file, or a name of a shipped tokenizer ("gpt2", "austen") from the data dir. */
etm_tokenizer *etm_tokenizer_load(const char *path_or_name, etm_error *err);
/* The file that etm_tokenizer_load would read for path_or_name (a bare word that is not an
 * existing file names a shipped tokenizer), written into buf; -1 and a message if there is none. */
int etm_tokenizer_path(const char *path_or_name, char *buf, size_t len, etm_error *err);
/* The same from a merges file's contents in memory; origin names it in messages. */
etm_tokenizer *etm_tokenizer_from_merges(const char *text, size_t len, const char *origin, etm_error *err);
void etm_tokenizer_free(etm_tokenizer *tok);
int etm_tokenizer_vocab_size(const etm_tokenizer *tok); /* merges + 256 + 1 */
int32_t etm_tokenizer_eot(const etm_tokenizer *tok);    /* id of <|endoftext|> */
/* (vocab_size) the UTF-8 bytes each token id decodes to, 0 for <|endoftext|> and ids past the
 * tokenizer's vocabulary (the byte table of bits per byte, trainer.h etm_evaluate_bytes; byte-level
 * BPE decodes a sequence to the concatenation of its tokens' bytes, so these sum to its length); NULL
 * and a message when a token cannot be decoded. */
int32_t *etm_tokenizer_byte_lengths(const etm_tokenizer *tok, int vocab_size, etm_error *err);

/* Encodes len bytes of text (any bytes; invalid UTF-8 is encoded byte-wise as GPT-2 does).
 * Returns a malloc'd array of *n_out ids. The literal text "<|endoftext|>" maps to the EOT id. */
int32_t *etm_tokenizer_encode(const etm_tokenizer *tok, const char *text, size_t len, size_t *n_out);
/* Decodes ids to bytes (malloc'd, NUL-terminated, *len_out without the NUL); NULL and a message
 * for an id outside the vocabulary. */
char *etm_tokenizer_decode(const etm_tokenizer *tok, const int32_t *ids, size_t n, size_t *len_out,
                           etm_error *err);
/* The bytes of one token (not NUL-terminated; EOT's are "<|endoftext|>"); NULL for an invalid id. */
const char *etm_tokenizer_token_bytes(const etm_tokenizer *tok, int32_t id, size_t *len);

#endif
