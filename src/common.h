/* common.h: error reporting, checked allocation, timing and file helpers shared by all of etmoe.
 *
 * Errors: library functions never exit. They return a negative value (or NULL) and describe the
 * problem in an etm_error the caller passes in; the command line prints it and exits non-zero.
 * Only allocation failure aborts (there is nothing sensible to do after it). */
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

/* Monotonic wall-clock seconds. */
double etm_now(void);

/* Reads a whole file into a NUL-terminated buffer; *len gets the size without the NUL. */
char *etm_read_file(const char *path, size_t *len, etm_error *err);

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
