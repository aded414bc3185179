/* fuzz/driver.c: runs a harness over files without libFuzzer: each argument is a file or a
 * directory of files; with none, the committed corpus fuzz/corpus/FUZZ_NAME (found through
 * $ETM_TEST_DIR, as make check sets it, or the source tree). This is make check's regression run
 * of every corpus, with any compiler. */
#include <config.h>

#include "fuzz.h"

#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#ifndef FUZZ_NAME
#error "FUZZ_NAME (the corpus folder's name) must be defined"
#endif

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "%s: cannot open\n", path);
        return -1;
    }
    size_t cap = 4096, n = 0, got;
    uint8_t *buf = malloc(cap);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Runs every regular file in dir, in name order; returns the count, or -1. */
static int run_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        names = realloc(names, (size_t)(n + 1) * sizeof *names);
        names[n] = malloc(strlen(dir) + strlen(e->d_name) + 2);
        sprintf(names[n], "%s/%s", dir, e->d_name);
        n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_names);
    int ran = 0;
    for (int i = 0; i < n; i++) {
        struct stat st;
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode) && run_file(names[i]) == 0) ran++;
        free(names[i]);
    }
    free(names);
    return ran;
}

static int run_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "%s: no such file or directory\n", path);
        return -1;
    }
    return S_ISDIR(st.st_mode) ? run_dir(path) : run_file(path) == 0 ? 1 : -1;
}

int main(int argc, char **argv) {
    int total = 0;
    if (argc < 2) {
        char dir[4096];
        const char *tests = getenv("ETM_TEST_DIR");
        snprintf(dir, sizeof dir, "%s/../fuzz/corpus/%s", tests && *tests ? tests : ETM_SRCDATADIR "/../tests",
                 FUZZ_NAME);
        total = run_path(dir);
        if (total <= 0) {
            fprintf(stderr, "fuzz %s: no corpus files in %s\n", FUZZ_NAME, dir);
            return 1;
        }
    } else {
        for (int i = 1; i < argc; i++) {
            int n = run_path(argv[i]);
            if (n < 0) return 1;
            total += n;
        }
    }
    printf("fuzz %s: %d inputs, no invariant broken\n", FUZZ_NAME, total);
    return 0;
}
