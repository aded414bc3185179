/* backend.c: the registry of backends built into this program (the only global state in etmoe):
 * a constant table from name to constructor; and the list of operations (backend.h's
 * ETM_BACKEND_OPS) at run time, checked against struct etm_backend at compile time. */
#include <config.h>

#include "backend.h"
#include "cpu/cpu.h"
#ifdef ETM_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- the list of operations ------------------------------------------------------------------ */
/* Compile-time proof that ETM_BACKEND_OPS and struct etm_backend agree: entry i of the list is the
 * struct's i-th function pointer (a list entry with no field does not compile; a field missing
 * from the list, or out of order, gives an array of negative size). C99 has no _Static_assert. */
#define ETM_OP_SLOT(i) (offsetof(etm_backend, destroy) + (size_t)(i) * sizeof(void (*)(void)))
#define ETM_OP_AT(name, kind)                                                                     \
    typedef char etm_op_in_place_##name[offsetof(etm_backend, name) == ETM_OP_SLOT(ETM_OPI_##name) ? 1 : -1];
ETM_BACKEND_OPS(ETM_OP_AT)
typedef char etm_ops_all_listed[sizeof(etm_backend) == ETM_OP_SLOT(ETM_BACKEND_N_OPS) ? 1 : -1];

#define ETM_OP_ROW(name, kind) {#name, kind},
static const struct {
    const char *name; /* the field's name */
    etm_op_kind kind; /* how the profiler and compare_ops treat it (backend.h) */
} op_list[ETM_BACKEND_N_OPS] = {ETM_BACKEND_OPS(ETM_OP_ROW)};

const char *etm_backend_op_name(int i) {
    return i >= 0 && i < ETM_BACKEND_N_OPS ? op_list[i].name : NULL;
}

etm_op_kind etm_backend_op_kind(int i) {
    return i >= 0 && i < ETM_BACKEND_N_OPS ? op_list[i].kind : ETM_OP_LIFETIME;
}

int etm_backend_op_index(const char *name) {
    for (int i = 0; name && i < ETM_BACKEND_N_OPS; i++)
        if (!strcmp(op_list[i].name, name)) return i;
    return -1;
}

void (*etm_backend_op(const etm_backend *be, int i))(void) {
#define ETM_OP_CASE(name, kind)                                                                    \
    case ETM_OPI_##name: return (void (*)(void))be->name;
    switch (i) { ETM_BACKEND_OPS(ETM_OP_CASE) }
#undef ETM_OP_CASE
    return NULL;
}

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
        if (!strcmp(registry[i].name, name)) {
            etm_backend *be = registry[i].create(err);
            /* A table with a hole would crash at the first call: refuse it here, by name. */
            for (int op = 0; be && op < ETM_BACKEND_N_OPS; op++)
                if (!etm_backend_op(be, op)) {
                    etm_fail(err, "backend '%s' has no operation '%s' (backends/backend.h)", name,
                             etm_backend_op_name(op));
                    etm_backend_free(be);
                    return NULL;
                }
            return be;
        }
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
