/* fuzz/fuzz_safetensors.c: the safetensors reader and the checkpoint loader on arbitrary bytes.
 * Whatever etm_st_open accepts must be readable tensor by tensor within its bounds; whatever
 * etm_checkpoint_read_config accepts must either load into a model or be refused with a message. */
#include <config.h>

#include "backend.h"
#include "checkpoint.h"
#include "fuzz.h"
#include "model.h"
#include "safetensors.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write_file(0, data, size);
    etm_error err = {{0}};
    etm_st_file *f = etm_st_open(path, &err);
    if (!f) {
        if (!err.msg[0]) fuzz_fail("etm_st_open failed without a message");
        return 0;
    }
    for (int i = 0; i < etm_st_count(f); i++) {
        const etm_st_tensor *t = etm_st_tensor_at(f, i);
        uint64_t bytes = t->end - t->begin;
        if (t->end < t->begin || bytes > size) fuzz_fail("tensor '%s' has range [%llu, %llu) in a %zu-byte file", t->name,
                                                         (unsigned long long)t->begin, (unsigned long long)t->end, size);
        void *dst = malloc(bytes ? (size_t)bytes : 1);
        if (etm_st_read(f, t->name, t->dtype, t->ndim, t->shape, dst, &err) != 0)
            fuzz_fail("a validated tensor '%s' does not read: %s", t->name, err.msg);
        free(dst);
        if (etm_st_find(f, t->name) != t) fuzz_fail("tensor '%s' not found by name", t->name);
    }
    etm_st_close(f);

    etm_hparams hp;
    if (etm_checkpoint_read_config(path, &hp, &err) != 0) return 0;
    /* Only models of a size a fuzzer can afford; the estimate refuses the rest for real runs. */
    etm_memory_estimate est;
    etm_model_memory_estimate(&hp, 1, 0, &est);
    if (est.total > 64.0 * 1024 * 1024) return 0;
    etm_backend *be = etm_backend_create("cpu", &err);
    if (!be) fuzz_fail("no cpu backend: %s", err.msg);
    etm_model *m = etm_checkpoint_load_model(path, be, 1, &err);
    if (!m && !err.msg[0]) fuzz_fail("load failed without a message");
    etm_model_free(m);
    etm_backend_free(be);
    return 0;
}
