/* common.h: error reporting, checked allocation, timing and file helpers shared by all of etmoe.
 *
 * Errors: library functions never exit. They return a negative value (or NULL) and describe the
 * problem in an etm_error the caller passes in; the command line prints it and exits non-zero.
 * etm_malloc and friends abort on allocation failure; the large buffers a run sizes from its
 * configuration (parameters, activations, shards) are allocated with etm_try_malloc or through a
 * backend, after a memory estimate, so that an impossible size is an error, not an abort. */
#ifndef ETM_COMMON_H
#define ETM_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    char msg[1024]; /* human-readable, says what and where; empty when no error */
} etm_error;

/* Formats msg into err (if non-NULL) and returns -1, so callers can `return etm_fail(err, ...)`. */
int etm_fail(etm_error *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Allocation that aborts with a message on failure. etm_calloc zeroes. */
void *etm_malloc(size_t bytes);
void *etm_calloc(size_t count, size_t size);
void *etm_realloc(void *p, size_t bytes);
char *etm_strdup(const char *s);

/* Allocation that returns NULL (and says how much in err) instead of aborting. */
void *etm_try_malloc(size_t bytes, const char *what, etm_error *err);

/* Checked size arithmetic: *out = a * b (or a + b); -1 when it does not fit a size_t. */
int etm_size_mul(size_t a, size_t b, size_t *out);
int etm_size_add(size_t a, size_t b, size_t *out);

/* Monotonic wall-clock seconds. */
double etm_now(void);

/* Opens path for reading, refusing anything but a regular file BEFORE it could block (a FIFO
 * opened for reading waits for a writer): open with O_NONBLOCK, fstat, then blocking mode again.
 * `what` names the file's role in messages ("checkpoint", "token shard", ...). One wording each:
 *   "PATH: no such file"                  "PATH: cannot open the WHAT: <strerror>"
 *   "PATH: is a directory, not a WHAT file"  "PATH: not a regular file (a FIFO, device or socket)"
 * Returns the descriptor (size in *size when non-NULL), or -1 with the message in err. */
int etm_open_regular(const char *path, const char *what, uint64_t *size, etm_error *err);

/* The same as a stdio stream ("rb"). */
FILE *etm_fopen_regular(const char *path, const char *what, uint64_t *size, etm_error *err);

/* The largest text file etm_read_file reads (configs, merges files, corpora for prepare and
 * tokenize): 1 GiB. Bigger inputs are refused with their size, not read until memory runs out. */
#define ETM_MAX_TEXT_BYTES ((uint64_t)1 << 30)

/* The largest config file: 1 MiB (the longest real one is a few KiB). */
#define ETM_MAX_CONFIG_BYTES ((uint64_t)1 << 20)

/* Reads a whole regular file of at most ETM_MAX_TEXT_BYTES into a NUL-terminated buffer; *len gets
 * the size without the NUL (the text may hold NUL bytes of its own: compare *len with strlen). */
char *etm_read_file(const char *path, size_t *len, etm_error *err);
/* The same with the role of the file (for messages) and a cap of max_bytes. */
char *etm_read_file_max(const char *path, const char *what, uint64_t max_bytes, size_t *len, etm_error *err);

/* Removes path.tmp.PID files left by processes that no longer exist (a kill during a save). */
void etm_clean_stale_tmp(const char *path);

/* Writes bytes to path atomically: path.tmp.PID, fsync, rename. Never leaves a partial file. */
int etm_write_file_atomic(const char *path, const void *data, size_t len, etm_error *err);

/* Opens path.tmp.PID for writing; etm_commit_atomic flushes, fsyncs, closes and renames it over
 * path (or removes it and fails). For writers that stream. */
FILE *etm_open_atomic(const char *path, char *tmp_path, size_t tmp_len, etm_error *err);
int etm_commit_atomic(FILE *f, const char *tmp_path, const char *path, etm_error *err);

/* mkdir -p: creates every missing directory of path; fails naming the part that is not a
 * directory or cannot be created. */
int etm_mkdir_p(const char *path, etm_error *err);

/* The directory holding shipped data: $ETM_DATA_DIR, else the source tree's data/ when it exists,
 * else the installed pkgdatadir. Writes into buf and returns it. */
const char *etm_data_dir(char *buf, size_t len);

#define ETM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define ETM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ETM_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
