/* tokenizer_split.h: GPT-2's pre-tokenizer, shared by the encoder and the BPE trainer. It cuts
 * text at the literal <|endoftext|>, then into pieces with GPT-2's regex (through PCRE2), and
 * handles bytes that are not valid UTF-8 without ever dropping one: the pieces always cover the
 * input exactly, in order.
 *
 * Invalid UTF-8: each maximal invalid subpart (WHATWG / Unicode "U+FFFD substitution of maximal
 * subparts", what node's TextDecoder and Python's errors='replace' do) is treated as if it were
 * one U+FFFD character, a symbol (class "other"). So the piece boundaries are exactly those that
 * GPT-2's regex finds in the text decoded with replacement; the pieces keep the original bytes. */
#ifndef ETM_TOKENIZER_SPLIT_H
#define ETM_TOKENIZER_SPLIT_H

#include <stddef.h>

#include "common.h"

#define ETM_EOT_TEXT "<|endoftext|>"

typedef struct etm_presplit etm_presplit;

/* Compiles the regex (JIT when available). The result is read-only and may be shared by threads. */
etm_presplit *etm_presplit_create(etm_error *err);
void etm_presplit_free(etm_presplit *ps);

/* Called once per piece, in order. is_eot: the piece is the literal <|endoftext|>.
 * Returning non-zero stops the split; etm_presplit_run then returns that value. */
typedef int (*etm_piece_fn)(void *ctx, const char *piece, size_t len, int is_eot);

/* Splits text[0..len) and calls fn for each piece. Returns 0, or what fn returned to stop. */
int etm_presplit_run(const etm_presplit *ps, const char *text, size_t len, etm_piece_fn fn, void *ctx);

/* Length of the next UTF-8 character at s[0..len) (len >= 1) as WHATWG's decoder reads it:
 * returns its byte length (1-4) if it is valid, else minus the length of the maximal invalid
 * subpart (1-3 bytes) that a decoder replaces with one U+FFFD. */
int etm_utf8_next(const unsigned char *s, size_t len);

/* A copy of text with every maximal invalid subpart replaced by U+FFFD (EF BF BD), as node's
 * TextDecoder decodes it; NUL-terminated, *out_len without the NUL. */
char *etm_utf8_replace_invalid(const char *text, size_t len, size_t *out_len);

#endif
