/* fuzz/fuzz_util.c: scratch files for the harnesses (fuzz.h). */
#include <config.h>

#include "fuzz.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char paths[4][512];

static void remove_scratch(void) {
    for (int i = 0; i < 4; i++)
        if (paths[i][0]) unlink(paths[i]);
}

const char *fuzz_write_file(int slot, const void *data, size_t size) {
    if (!paths[slot][0]) {
        const char *dir = getenv("TMPDIR");
        snprintf(paths[slot], sizeof paths[slot], "%s/etmoe-fuzz-%ld-%d", dir && *dir ? dir : "/tmp",
                 (long)getpid(), slot);
        static int registered;
        if (!registered++) atexit(remove_scratch);
    }
    FILE *f = fopen(paths[slot], "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        fprintf(stderr, "fuzz: cannot write %s\n", paths[slot]);
        abort();
    }
    return paths[slot];
}
