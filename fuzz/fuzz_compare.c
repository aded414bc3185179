/* fuzz/fuzz_compare.c: compare's reader (etm_dump_compare) on two arbitrary files. The first 4
 * bytes (little-endian) give the length of file A; the rest after A is file B. Whatever the
 * files, compare answers: within, beyond, or an error with a message, never a crash. */
#include <config.h>

#include "dump.h"
#include "fuzz.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    size_t la = (size_t)data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    size -= 4;
    data += 4;
    if (la > size) la = size;
    const char *a = fuzz_write_file(0, data, la);
    const char *b = fuzz_write_file(1, data + la, size - la);
    FILE *sink = fopen("/dev/null", "w");
    if (!sink) fuzz_fail("no /dev/null");
    etm_compare_opts o;
    etm_compare_opts_default(&o);
    etm_compare_result r;
    etm_error err = {{0}};
    int ok = etm_dump_compare(a, b, &o, sink, &r, &err);
    if (ok < 0 && !err.msg[0]) fuzz_fail("compare failed without a message");
    if (ok >= 0) etm_compare_result_free(&r);
    fclose(sink);
    return 0;
}
