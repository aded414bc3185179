/* shard.h: token shards in llm.c's binary format (doc/data-format.md): a header of 256
 * little-endian int32 (magic 20240520, version, token count), then the tokens, uint16 in version 1
 * and uint32 in version 2. Shards written by llm.c's dev/data scripts read unchanged.
 *
 * A shard is opened once and validated whole (size, magic, version, count); its tokens are then
 * memory-mapped, or read into memory when mapping is not possible. */
#ifndef ETM_SHARD_H
#define ETM_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define ETM_SHARD_MAGIC 20240520
#define ETM_SHARD_HEADER_INTS 256
#define ETM_SHARD_HEADER_BYTES (ETM_SHARD_HEADER_INTS * 4)
#define ETM_SHARD_V16 1 /* uint16 tokens: every id <= 65535 */
#define ETM_SHARD_V32 2 /* uint32 tokens: vocabularies over 65,535 */
/* The count is an int32 in the header, as llm.c writes it. */
#define ETM_SHARD_MAX_TOKENS ((uint64_t)INT32_MAX)

/* Writes n tokens to path atomically (a temporary file renamed into place), as version 1 when
 * every id fits in uint16 and version 2 otherwise. Fails on a negative id or n above
 * ETM_SHARD_MAX_TOKENS; the previous file at path, if any, is then untouched. */
int etm_shard_write(const char *path, const int32_t *tokens, size_t n, etm_error *err);

typedef enum {
    ETM_SHARD_LOAD_AUTO = 0, /* mmap, falling back to read() when mapping fails */
    ETM_SHARD_LOAD_READ = 1  /* always read() into memory */
} etm_shard_load;

typedef struct etm_shard etm_shard;

/* Opens and validates a shard. On a bad file returns NULL and an error naming the file and what
 * is wrong, with the expected and found values. */
etm_shard *etm_shard_open(const char *path, etm_shard_load how, etm_error *err);
void etm_shard_free(etm_shard *s);

const char *etm_shard_path(const etm_shard *s);
int etm_shard_version(const etm_shard *s);     /* ETM_SHARD_V16 or ETM_SHARD_V32 */
uint64_t etm_shard_n_tokens(const etm_shard *s);
int etm_shard_is_mapped(const etm_shard *s);   /* 1 when the tokens are mmap'd, 0 when read */

/* Token i (i < n_tokens) as stored. */
uint32_t etm_shard_token(const etm_shard *s, uint64_t i);

/* Copies tokens [start, start + n) into out. Each must be below vocab_size (when vocab_size > 0)
 * and fit in an int32; otherwise fails naming the shard, the token's offset and its value. */
int etm_shard_read(const etm_shard *s, uint64_t start, size_t n, int vocab_size, int32_t *out,
                   etm_error *err);

#endif
