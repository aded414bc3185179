/* common.c: error reporting, checked allocation, timing and atomic file writes. */
#include <config.h>

#include "common.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

void *etm_try_malloc(size_t bytes, const char *what, etm_error *err) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        etm_fail(err, "out of memory: %s needs %.2f GiB more than this machine can give", what,
                 (double)bytes / (1024.0 * 1024.0 * 1024.0));
    return p;
}

int etm_size_mul(size_t a, size_t b, size_t *out) {
    if (b && a > SIZE_MAX / b) return -1;
    *out = a * b;
    return 0;
}

int etm_size_add(size_t a, size_t b, size_t *out) {
    if (a > SIZE_MAX - b) return -1;
    *out = a + b;
    return 0;
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

int etm_open_regular(const char *path, const char *what, uint64_t *size, etm_error *err) {
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever. */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT) etm_fail(err, "%s: no such file", path);
        else if (errno == EISDIR) etm_fail(err, "%s: is a directory, not a %s file", path, what);
        else etm_fail(err, "%s: cannot open the %s: %s", path, what, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        etm_fail(err, "%s: cannot open the %s: %s", path, what, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        if (S_ISDIR(st.st_mode)) etm_fail(err, "%s: is a directory, not a %s file", path, what);
        else etm_fail(err, "%s: not a regular file (a FIFO, device or socket), so not a %s file", path, what);
        close(fd);
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        etm_fail(err, "%s: cannot open the %s: %s", path, what, strerror(errno));
        close(fd);
        return -1;
    }
    if (size) *size = (uint64_t)st.st_size;
    return fd;
}

FILE *etm_fopen_regular(const char *path, const char *what, uint64_t *size, etm_error *err) {
    int fd = etm_open_regular(path, what, size, err);
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        etm_fail(err, "%s: cannot open the %s: %s", path, what, strerror(errno));
        close(fd);
    }
    return f;
}

char *etm_read_file_max(const char *path, const char *what, uint64_t max_bytes, size_t *len, etm_error *err) {
    uint64_t size = 0;
    FILE *f = etm_fopen_regular(path, what, &size, err);
    if (!f) return NULL;
    if (size > max_bytes || size >= SIZE_MAX) {
        fclose(f);
        etm_fail(err, "%s: %llu bytes, over the limit of %llu bytes for a %s file", path, (unsigned long long)size,
                 (unsigned long long)max_bytes, what);
        return NULL;
    }
    /* st_size is only a hint (the file may grow or shrink while we read): read up to the cap + 1. */
    size_t cap = (size_t)size + 1, n = 0;
    char *buf = etm_try_malloc(cap, what, err);
    if (!buf) {
        fclose(f);
        return NULL;
    }
    for (;;) {
        if (n + 1 >= cap) {
            int c = fgetc(f); /* the buffer is full: is there more? */
            if (c == EOF) break;
            if ((uint64_t)n >= max_bytes) {
                fclose(f);
                free(buf);
                etm_fail(err, "%s: grew past the limit of %llu bytes for a %s file while being read", path,
                         (unsigned long long)max_bytes, what);
                return NULL;
            }
            size_t grown = cap * 2;
            if ((uint64_t)grown > max_bytes + 1) grown = (size_t)max_bytes + 1;
            char *bigger = realloc(buf, grown);
            if (!bigger) {
                fclose(f);
                free(buf);
                etm_fail(err, "%s: out of memory reading the %s", path, what);
                return NULL;
            }
            buf = bigger;
            cap = grown;
            buf[n++] = (char)c;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        etm_fail(err, "%s: read error in the %s: %s", path, what, strerror(errno));
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

char *etm_read_file(const char *path, size_t *len, etm_error *err) {
    return etm_read_file_max(path, "text", ETM_MAX_TEXT_BYTES, len, err);
}

void etm_clean_stale_tmp(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash) {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir) return;
        memcpy(dir, path, n);
        dir[n] = '\0';
        if (n == 0) snprintf(dir, sizeof dir, "/");
    } else {
        snprintf(dir, sizeof dir, ".");
    }
    size_t blen = strlen(base);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strncmp(name, base, blen) != 0 || strncmp(name + blen, ".tmp.", 5) != 0) continue;
        const char *digits = name + blen + 5;
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (errno || end == digits || *end || pid <= 0 || (pid_t)pid != pid) continue;
        /* kill(pid, 0): ESRCH says no such process; a live writer (or one we may not signal) keeps its file. */
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char full[8192];
        if (snprintf(full, sizeof full, "%s/%s", dir, name) >= (int)sizeof full) continue;
        unlink(full);
    }
    closedir(d);
}

FILE *etm_open_atomic(const char *path, char *tmp_path, size_t tmp_len, etm_error *err) {
    int n = snprintf(tmp_path, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= tmp_len) {
        etm_fail(err, "%s: path too long", path);
        return NULL;
    }
    etm_clean_stale_tmp(path);
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
