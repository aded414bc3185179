/* fuzz/fuzz_shard.c: the token-shard reader and the data loader on arbitrary bytes. A shard that
 * opens must hold exactly the tokens its header says, each readable; the loader over it must give
 * batches of ids inside the vocabulary, or refuse with a message. */
#include <config.h>

#include "fuzz.h"
#include "loader.h"
#include "shard.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write_file(0, data, size);
    etm_error err = {{0}};
    const int vocab = 300; /* small, so that out-of-vocabulary ids are common */
    for (int how = 0; how < 2; how++) {
        etm_shard *s = etm_shard_open(path, how ? ETM_SHARD_LOAD_READ : ETM_SHARD_LOAD_AUTO, &err);
        if (!s) {
            if (!err.msg[0]) fuzz_fail("etm_shard_open failed without a message");
            return 0;
        }
        uint64_t n = etm_shard_n_tokens(s);
        int width = etm_shard_version(s) == ETM_SHARD_V16 ? 2 : 4;
        if (ETM_SHARD_HEADER_BYTES + n * (uint64_t)width != size)
            fuzz_fail("%llu tokens of %d bytes in a %zu-byte shard", (unsigned long long)n, width, size);
        int32_t *out = malloc((size_t)(n ? n : 1) * sizeof *out);
        /* without a vocabulary, only ids beyond int32 (a version-2 shard's uint32) are refused */
        if (etm_shard_read(s, 0, (size_t)n, 0, out, &err) != 0 && !strstr(err.msg, "outside the vocabulary of 2147483648"))
            fuzz_fail("an open shard does not read: %s", err.msg);
        int bad = etm_shard_read(s, 0, (size_t)n, vocab, out, &err);
        for (uint64_t i = 0; !bad && i < n; i++)
            if (out[i] < 0 || out[i] >= vocab) fuzz_fail("token %d passed the vocabulary check", (int)out[i]);
        if (n < UINT64_MAX && etm_shard_read(s, n, 1, 0, out, &err) == 0) fuzz_fail("read past the end");
        free(out);
        etm_shard_free(s);
    }
    /* The loader: B = 2 windows of T = 4 tokens, shuffled. */
    etm_loader *ld = etm_loader_open(path, 2, 4, 7, 1, vocab, &err);
    if (!ld) return 0;
    int32_t in[8], tg[8];
    for (int b = 0; b < 3; b++) {
        if (etm_loader_next(ld, in, tg, &err) != 0) break; /* an id outside the vocabulary */
        for (int i = 0; i < 8; i++)
            if (in[i] < 0 || in[i] >= vocab || tg[i] < 0 || tg[i] >= vocab) fuzz_fail("loader gave id %d / %d", in[i], tg[i]);
    }
    etm_loader_pos pos;
    etm_loader_get_pos(ld, &pos);
    if (etm_loader_set_pos(ld, &pos, &err) != 0) fuzz_fail("the loader refuses its own position: %s", err.msg);
    etm_loader_free(ld);
    return 0;
}
