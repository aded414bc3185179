/* shard.c: writing, validating and mapping token shards (llm.c's format, versions 1 and 2).
 * Bytes on disk are little-endian whatever the host; they are assembled byte by byte, which
 * compilers turn into plain loads on little-endian machines. */
#include <config.h>

#include "shard.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct etm_shard {
    char *path;             /* as given to etm_shard_open */
    int version;            /* ETM_SHARD_V16 or ETM_SHARD_V32 */
    int width;              /* bytes per token: 2 or 4 */
    uint64_t n_tokens;      /* from the header, checked against the file size */
    const unsigned char *tokens; /* (n_tokens * width) little-endian bytes after the header */
    void *base;             /* the whole file: a mapping of file_bytes, or a malloc'd copy */
    size_t file_bytes;      /* header + tokens */
    int mapped;             /* 1: base is an mmap, 0: base is malloc'd */
};

static void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t get_le16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static int write_all(FILE *f, const void *buf, size_t n) { return fwrite(buf, 1, n, f) == n ? 0 : -1; }

int etm_shard_write(const char *path, const int32_t *tokens, size_t n, etm_error *err) {
    if ((uint64_t)n > ETM_SHARD_MAX_TOKENS)
        return etm_fail(err, "%s: %zu tokens do not fit one shard (the header's count is an int32; at most %lld)",
                        path, n, (long long)ETM_SHARD_MAX_TOKENS);
    int32_t max_id = 0;
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < 0)
            return etm_fail(err, "%s: token %zu is %ld; shards hold only non-negative ids", path, i,
                            (long)tokens[i]);
        if (tokens[i] > max_id) max_id = tokens[i];
    }
    int version = max_id <= 65535 ? ETM_SHARD_V16 : ETM_SHARD_V32;
    int width = version == ETM_SHARD_V16 ? 2 : 4;

    unsigned char header[ETM_SHARD_HEADER_BYTES];
    memset(header, 0, sizeof header);
    put_le32(header, ETM_SHARD_MAGIC);
    put_le32(header + 4, (uint32_t)version);
    put_le32(header + 8, (uint32_t)n);

    char tmp[4096];
    FILE *f = etm_open_atomic(path, tmp, sizeof tmp, err);
    if (!f) return -1;
    int bad = write_all(f, header, sizeof header);
    enum { CHUNK = 1 << 14 };
    unsigned char buf[CHUNK * 4];
    for (size_t i = 0; i < n && !bad; i += CHUNK) {
        size_t m = ETM_MIN((size_t)CHUNK, n - i);
        for (size_t j = 0; j < m; j++) {
            uint32_t v = (uint32_t)tokens[i + j];
            buf[j * width] = (unsigned char)v;
            buf[j * width + 1] = (unsigned char)(v >> 8);
            if (width == 4) {
                buf[j * width + 2] = (unsigned char)(v >> 16);
                buf[j * width + 3] = (unsigned char)(v >> 24);
            }
        }
        bad = write_all(f, buf, m * width);
    }
    if (bad) {
        fclose(f);
        remove(tmp);
        return etm_fail(err, "%s: write failed (disk full?); the previous file is untouched", path);
    }
    return etm_commit_atomic(f, tmp, path, err);
}

/* Reads exactly n bytes at offset, retrying short reads; -1 and errno on failure. */
static int pread_all(int fd, void *buf, size_t n, off_t offset) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, offset);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            if (got == 0) errno = EIO; /* the file shrank under us */
            return -1;
        }
        p += got;
        n -= (size_t)got;
        offset += got;
    }
    return 0;
}

/* Checks the header against the file's size; on success sets version, width and n_tokens. */
static int check_header(const char *path, const unsigned char *header, uint64_t file_bytes, int *version,
                        int *width, uint64_t *n_tokens, etm_error *err) {
    int32_t magic = (int32_t)get_le32(header);
    int32_t ver = (int32_t)get_le32(header + 4);
    int32_t count = (int32_t)get_le32(header + 8);
    if (magic != ETM_SHARD_MAGIC)
        return etm_fail(err, "%s: bad magic number %ld in the header (expected %d): not a token shard", path,
                        (long)magic, ETM_SHARD_MAGIC);
    if (ver != ETM_SHARD_V16 && ver != ETM_SHARD_V32)
        return etm_fail(err,
                        "%s: unknown shard version %ld (expected 1 = uint16 tokens or 2 = uint32 tokens)",
                        path, (long)ver);
    if (count < 0)
        return etm_fail(err, "%s: negative token count %ld in the header (expected 0 or more)", path,
                        (long)count);
    *version = ver;
    *width = ver == ETM_SHARD_V16 ? 2 : 4;
    *n_tokens = (uint64_t)count;
    uint64_t expected = ETM_SHARD_HEADER_BYTES + *n_tokens * (uint64_t)*width;
    if (file_bytes != expected)
        return etm_fail(err,
                        "%s: size mismatch: the header says %lld tokens of %d bytes, so expected %llu bytes "
                        "(1024 + %lld * %d), found %llu bytes (%s)",
                        path, (long long)count, *width, (unsigned long long)expected, (long long)count,
                        *width, (unsigned long long)file_bytes,
                        file_bytes < expected ? "truncated, or a wrong count" : "extra bytes, or a wrong count");
    return 0;
}

etm_shard *etm_shard_open(const char *path, etm_shard_load how, etm_error *err) {
    uint64_t file_bytes = 0;
    int fd = etm_open_regular(path, "token shard", &file_bytes, err);
    if (fd < 0) return NULL;
    if (file_bytes < ETM_SHARD_HEADER_BYTES) {
        if (file_bytes == 0)
            etm_fail(err, "%s: empty file (0 bytes); a token shard starts with a %d-byte header", path,
                     ETM_SHARD_HEADER_BYTES);
        else
            etm_fail(err, "%s: file is %llu bytes, shorter than the %d-byte shard header (truncated?)", path,
                     (unsigned long long)file_bytes, ETM_SHARD_HEADER_BYTES);
        close(fd);
        return NULL;
    }
    if (file_bytes > (uint64_t)SIZE_MAX) {
        etm_fail(err, "%s: %llu bytes do not fit this machine's address space", path,
                 (unsigned long long)file_bytes);
        close(fd);
        return NULL;
    }
    unsigned char header[ETM_SHARD_HEADER_BYTES];
    if (pread_all(fd, header, sizeof header, 0) != 0) {
        etm_fail(err, "%s: cannot read the header: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    int version = 0, width = 0;
    uint64_t n_tokens = 0;
    if (check_header(path, header, file_bytes, &version, &width, &n_tokens, err) != 0) {
        close(fd);
        return NULL;
    }

    etm_shard *s = etm_calloc(1, sizeof *s);
    s->path = etm_strdup(path);
    s->version = version;
    s->width = width;
    s->n_tokens = n_tokens;
    s->file_bytes = (size_t)file_bytes;
    if (how == ETM_SHARD_LOAD_AUTO) {
        void *m = mmap(NULL, s->file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m != MAP_FAILED) {
            s->base = m;
            s->mapped = 1;
        }
    }
    if (!s->mapped) {
        s->base = etm_try_malloc(s->file_bytes, "a token shard", err);
        if (!s->base) {
            etm_fail(err, "%s: out of memory reading its %zu bytes", path, s->file_bytes);
            close(fd);
            etm_shard_free(s);
            return NULL;
        }
        if (pread_all(fd, s->base, s->file_bytes, 0) != 0) {
            etm_fail(err, "%s: read error: %s", path, strerror(errno));
            close(fd);
            etm_shard_free(s);
            return NULL;
        }
    }
    close(fd); /* a mapping outlives its descriptor */
    s->tokens = (const unsigned char *)s->base + ETM_SHARD_HEADER_BYTES;
    return s;
}

void etm_shard_free(etm_shard *s) {
    if (!s) return;
    if (s->mapped) munmap(s->base, s->file_bytes);
    else free(s->base);
    free(s->path);
    free(s);
}

const char *etm_shard_path(const etm_shard *s) { return s->path; }
int etm_shard_version(const etm_shard *s) { return s->version; }
uint64_t etm_shard_n_tokens(const etm_shard *s) { return s->n_tokens; }
int etm_shard_is_mapped(const etm_shard *s) { return s->mapped; }

uint32_t etm_shard_token(const etm_shard *s, uint64_t i) {
    return s->width == 2 ? get_le16(s->tokens + 2 * i) : get_le32(s->tokens + 4 * i);
}

int etm_shard_read(const etm_shard *s, uint64_t start, size_t n, int vocab_size, int32_t *out,
                   etm_error *err) {
    if (start > s->n_tokens || n > s->n_tokens - start)
        return etm_fail(err, "%s: tokens [%llu, %llu) asked for, but the shard holds %llu", s->path,
                        (unsigned long long)start, (unsigned long long)(start + n),
                        (unsigned long long)s->n_tokens);
    uint32_t limit = vocab_size > 0 ? (uint32_t)vocab_size : (uint32_t)INT32_MAX + 1u;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = etm_shard_token(s, start + i);
        if (v >= limit) {
            uint64_t at = start + i;
            return etm_fail(err, "%s: token at offset %llu (byte %llu) is %lu, outside the vocabulary of %lu ids",
                            s->path, (unsigned long long)at,
                            (unsigned long long)(ETM_SHARD_HEADER_BYTES + at * (uint64_t)s->width),
                            (unsigned long)v, (unsigned long)limit);
        }
        out[i] = (int32_t)v;
    }
    return 0;
}
