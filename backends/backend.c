/* backend.c: the registry of backends built into this program (the only global state in etmoe):
 * a constant table from name to constructor. */
#include <config.h>

#include "backend.h"
#include "cpu/cpu.h"
#ifdef ETM_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#include <stdlib.h>
#include <string.h>

/* Every backend built in, as X(name, constructor), in the order `etmoe backends` lists them.
 * A new backend is one more line here (under its #ifdef) plus its constructor's header above. */
#define ETM_BACKEND_TABLE(X)                                                                       \
    X("cpu", etm_cpu_backend_create)                                                               \
    ETM_CUDA_ENTRY(X)

/* The CUDA backend, built when configure found nvcc. */
#ifdef ETM_HAVE_CUDA
#define ETM_CUDA_ENTRY(X) X("cuda", etm_cuda_backend_create)
#else
#define ETM_CUDA_ENTRY(X)
#endif

typedef struct {
    const char *name;                       /* as given to etm_backend_create */
    etm_backend *(*create)(etm_error *err); /* NULL with a message when it cannot run here */
} backend_entry;

#define ETM_ENTRY(name, create) {name, create},
#define ETM_NAME(name, create) name,
static const backend_entry registry[] = {ETM_BACKEND_TABLE(ETM_ENTRY)};
static const char *const registry_names[] = {ETM_BACKEND_TABLE(ETM_NAME) NULL};

const char *const *etm_backend_names(void) { return registry_names; }

etm_backend *etm_backend_create(const char *name, etm_error *err) {
    if (!name || !*name) {
        etm_fail(err, "no backend name given (built in: cpu)");
        return NULL;
    }
    for (size_t i = 0; i < ETM_ARRAY_LEN(registry); i++)
        if (!strcmp(registry[i].name, name)) return registry[i].create(err);
    char built[256] = "";
    for (size_t i = 0; i < ETM_ARRAY_LEN(registry); i++) {
        if (i) strncat(built, ", ", sizeof built - strlen(built) - 1);
        strncat(built, registry[i].name, sizeof built - strlen(built) - 1);
    }
    if (!strcmp(name, "cuda"))
        etm_fail(err, "backend 'cuda' is not built into this program (built in: %s)", built);
    else
        etm_fail(err, "unknown backend '%s' (built in: %s)", name, built);
    return NULL;
}

void etm_backend_free(etm_backend *be) {
    if (!be) return;
    if (be->destroy) be->destroy(be);
    free(be);
}
