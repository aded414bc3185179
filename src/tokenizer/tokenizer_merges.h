/* tokenizer_merges.h: GPT-2's merges-file format, read by the tokenizer and written by the BPE
 * trainer. The file is a "#version: 0.2" line, then one merge per line, "A B", where A and B are
 * tokens written in GPT-2's byte alphabet: each byte is shown as one printable character (bytes
 * that are printable Latin-1 as themselves, the other 68 as U+0100..U+0143 in byte order), so
 * that tokens contain no spaces or newlines. */
#ifndef ETM_TOKENIZER_MERGES_H
#define ETM_TOKENIZER_MERGES_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define ETM_MERGES_HEADER "#version: 0.2"

/* GPT-2's byte alphabet (its bytes_to_unicode table) and the ids of the 256 one-byte tokens:
 * the printable bytes first in byte order, then the others in byte order. */
typedef struct {
    int32_t byte_to_id[256];  /* id of the one-byte token of each byte value */
    uint8_t id_to_byte[256];  /* inverse of byte_to_id */
    uint32_t byte_to_cp[256]; /* the code point the merges file writes each byte as */
} etm_byte_alphabet;

void etm_byte_alphabet_init(etm_byte_alphabet *a);

/* A list of merges as raw bytes. */
typedef struct {
    size_t n;    /* number of merges */
    char *bytes; /* the left and right token of every merge, back to back */
    size_t *off; /* (2n + 1) left of merge i is bytes[off[2i], off[2i+1]), right [off[2i+1], off[2i+2]) */
} etm_merges;

/* Parses a merges file's contents; origin names it in messages ("FILE:LINE: ..."). Checks the
 * header, that each line is two non-empty tokens separated by one space, and that every
 * character is in the byte alphabet. Whether the tokens exist is the loader's business. */
int etm_merges_parse(const char *text, size_t len, const char *origin, etm_merges *out, etm_error *err);

/* Formats merges as a merges file (header and a final newline); malloc'd, NUL-terminated. */
char *etm_merges_format(const etm_merges *m, size_t *len);

void etm_merges_free(etm_merges *m);

#endif
