/* fuzz/fuzz.h: what the fuzz harnesses share. Each fuzz_*.c defines LLVMFuzzerTestOneInput; it is
 * linked either with libFuzzer (make fuzz, clang) or with driver.c, which feeds it every file of
 * the committed corpus (the regression run of make check, any compiler). A harness returns 0 and
 * calls fuzz_fail (abort) when an invariant breaks: an error message is fine, a wrong answer is not. */
#ifndef ETM_FUZZ_H
#define ETM_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes data to this process's scratch file number `slot` (0..3) and returns its path: the
 * readers under test take paths. */
const char *fuzz_write_file(int slot, const void *data, size_t size);

/* Reports a broken invariant and aborts, so that libFuzzer (or the driver) records the input. */
#define fuzz_fail(...)                                                                              \
    do {                                                                                           \
        fprintf(stderr, "fuzz invariant broken: " __VA_ARGS__);                                    \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

#endif
