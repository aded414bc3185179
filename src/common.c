/* common.c: error reporting, checked allocation, timing and atomic file writes. */
#include <config.h>

#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int etm_fail(etm_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void out_of_memory(size_t bytes) {
    fprintf(stderr, "etmoe: out of memory allocating %zu bytes\n", bytes);
    abort();
}

void *etm_malloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) out_of_memory(bytes);
    return p;
}

void *etm_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) out_of_memory(count * size);
    return p;
}

void *etm_realloc(void *p, size_t bytes) {
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) out_of_memory(bytes);
    return q;
}

char *etm_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = etm_malloc(n);
    memcpy(d, s, n);
    return d;
}

double etm_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

char *etm_read_file(const char *path, size_t *len, etm_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        etm_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = etm_malloc(cap);
    for (;;) {
        if (n + 1 >= cap) buf = etm_realloc(buf, cap *= 2);
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        etm_fail(err, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

FILE *etm_open_atomic(const char *path, char *tmp_path, size_t tmp_len, etm_error *err) {
    int n = snprintf(tmp_path, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= tmp_len) {
        etm_fail(err, "%s: path too long", path);
        return NULL;
    }
    FILE *f = fopen(tmp_path, "wb");
    if (!f) etm_fail(err, "%s: cannot create: %s", tmp_path, strerror(errno));
    return f;
}

int etm_commit_atomic(FILE *f, const char *tmp_path, const char *path, etm_error *err) {
    int bad = fflush(f) != 0 || ferror(f);
#ifdef HAVE_FSYNC
    if (!bad) bad = fsync(fileno(f)) != 0;
#endif
    bad |= fclose(f) != 0;
    if (bad) {
        remove(tmp_path);
        return etm_fail(err, "%s: write failed (disk full?); the previous file is untouched", path);
    }
    if (rename(tmp_path, path) != 0) {
        int e = errno;
        remove(tmp_path);
        return etm_fail(err, "%s: cannot rename %s into place: %s", path, tmp_path, strerror(e));
    }
    return 0;
}

int etm_write_file_atomic(const char *path, const void *data, size_t len, etm_error *err) {
    char tmp[4096];
    FILE *f = etm_open_atomic(path, tmp, sizeof tmp, err);
    if (!f) return -1;
    if (len && fwrite(data, 1, len, f) != len) {
        fclose(f);
        remove(tmp);
        return etm_fail(err, "%s: write failed (disk full?); the previous file is untouched", path);
    }
    return etm_commit_atomic(f, tmp, path, err);
}

int etm_mkdir_p(const char *path, etm_error *err) {
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return etm_fail(err, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        struct stat st;
        if (stat(buf, &st) != 0) {
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return etm_fail(err, "%s: cannot create the directory: %s", buf, strerror(errno));
        } else if (!S_ISDIR(st.st_mode)) {
            return etm_fail(err, "%s: exists and is not a directory", buf);
        }
        *p = c;
        if (c == '\0') break;
    }
    return 0;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *etm_data_dir(char *buf, size_t len) {
    const char *env = getenv("ETM_DATA_DIR");
    if (env && *env) snprintf(buf, len, "%s", env);
    else if (is_dir(ETM_SRCDATADIR)) snprintf(buf, len, "%s", ETM_SRCDATADIR);
    else snprintf(buf, len, "%s", ETM_DATADIR);
    return buf;
}
