/* etmoe.c: the program's entry point: runtime checks, --version, and dispatch to the verbs. */
#include <config.h>

#include "cli.h"
#include "common.h"
#ifdef ETM_HAVE_MPI
#include "comm_mpi.h"
#endif
#ifdef ETM_HAVE_NCCL
#include "comm_nccl.h"
#endif

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const etm_verb verbs[] = {
    /* one line per verb; keep the table's order the order of --help */
    {"tokenize", cmd_tokenize, "text <-> token ids (GPT-2 BPE or a trained one); --bench for speed"},
    {"tokenizer", cmd_tokenizer, "train a byte-level BPE tokenizer: tokenizer train --vocab-size N ..."},
    {"prepare", cmd_prepare, "text files -> train/val token shards: prepare --tokenizer T --out DIR FILES..."},
    {"train", cmd_train, "train a model: train CONFIG [key=value...] [--resume] (progress, metrics, checkpoints)"},
    {"eval", cmd_eval, "validation loss and perplexity of a checkpoint: eval CHECKPOINT [--data SHARDS]"},
    {"backends", cmd_backends, "list the compute backends built in (--bench: GEMM speed)"},
    {"dump", cmd_dump, "one training forward+backward of a checkpoint, every tensor, to a file"},
    {"compare", cmd_compare, "compare two dump files tensor by tensor within tolerances"},
    {"inspect", cmd_inspect, "a checkpoint's router state and (--data) its routing statistics"},
    {"generate", cmd_generate, "sample text from a checkpoint; --show-experts colours tokens by routed experts"},
    {"check-backend", cmd_check_backend, "validate a backend (e.g. cuda) against cpu: ops, one training step, loss curves"},
    {"bench", cmd_bench, "training-step speed of a config's model: tokens/s, GFLOP/s, % of GEMM ceiling"},
    {"routing-profile", cmd_routing_profile, "experts per token by position, token kind and id, loads, cut-offs: TSV tables"},
    {NULL, NULL, NULL},
};

int cli_usage_error(const char *verb, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "etmoe %s: ", verb);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(run 'etmoe %s --help' for usage)\n", verb);
    return ETM_EXIT_USAGE;
}

int cli_option_value(int argc, char **argv, int *i, const char *name, const char **value, int *missing) {
    size_t k = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, k) != 0) return 0;
    if (a[k] == '=') {
        *value = a + k + 1;
        return 1;
    }
    if (a[k] != '\0') return 0;
    if (*i + 1 >= argc) {
        *missing = 1;
        return 1;
    }
    *value = argv[++*i];
    return 1;
}

int cli_parse_options(const char *verb, int argc, char **argv, const cli_option *opts, size_t n_opts,
                      const char *what, const char **positional, void (*usage)(void)) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            return CLI_HELP_SHOWN;
        }
        int matched = 0;
        for (size_t o = 0; o < n_opts && !matched; o++) {
            if (!opts[o].value) {
                if ((matched = !strcmp(a, opts[o].name))) *opts[o].flag = 1;
                continue;
            }
            int missing = 0;
            matched = cli_option_value(argc, argv, &i, opts[o].name, opts[o].value, &missing);
            if (missing) return cli_usage_error(verb, "option '%s' needs a value", a);
        }
        if (matched) continue;
        if (a[0] == '-' && a[1]) return cli_usage_error(verb, "unknown option '%s'", a);
        if (*positional) return cli_usage_error(verb, "one %s only ('%s' and '%s')", what, *positional, a);
        *positional = a;
    }
    return CLI_PARSED;
}

int cli_parse_long(const char *text, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

#ifdef HAVE_OPENBLAS
int openblas_get_parallel(void);
int openblas_get_num_threads(void);
char *openblas_get_config(void);
#endif

static int threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* A pthread OpenBLAS under an OpenMP program spawns its own thread pool beside ours: each of our
 * threads calling sgemm oversubscribes the cores and timings become noise. Refuse it. */
static int check_blas_runtime(void) {
#if defined(HAVE_OPENBLAS) && defined(_OPENMP)
    if (openblas_get_parallel() == 1) {
        fprintf(stderr,
                "etmoe: the OpenBLAS loaded at run time is the pthread build, but etmoe uses OpenMP.\n"
                "Its threads would fight ours. Install the OpenMP build (Debian: libopenblas0-openmp)\n"
                "and make sure it is the one loaded (ldd $(which etmoe) | grep blas).\n");
        return -1;
    }
#endif
    return 0;
}

static void print_version(void) {
    printf("etmoe %s\n", PACKAGE_VERSION);
#ifdef HAVE_OPENBLAS
    int par = openblas_get_parallel();
    printf("BLAS: %s (%s threading)\n", openblas_get_config(),
           par == 2 ? "OpenMP" : par == 1 ? "pthread" : "sequential");
#else
    printf("BLAS: user-supplied CBLAS\n");
#endif
#ifdef _OPENMP
    printf("OpenMP: yes, %d threads (set OMP_NUM_THREADS to change)\n", threads());
#else
    printf("OpenMP: no (serial build), 1 thread\n");
#endif
#ifdef ETM_HAVE_CUDA
    printf("CUDA backend: built\n");
#else
    printf("CUDA backend: not built\n");
#endif
#ifdef ETM_HAVE_MPI
    char mpi[256];
    etm_comm_mpi_version(mpi, sizeof mpi);
#ifdef ETM_HAVE_NCCL
    char nccl[64];
    etm_comm_nccl_version(nccl, sizeof nccl);
    printf("MPI: built (%s); NCCL: built (%s) for CUDA ranks\n", mpi, nccl);
#else
    printf("MPI: built (%s); NCCL: not built (CUDA ranks reduce through host memory over MPI)\n", mpi);
#endif
#else
    printf("MPI: not built (configure --with-mpi); NCCL: not built\n");
#endif
}

static void print_help(void) {
    printf("usage: etmoe VERB [options...]   (etmoe VERB --help for each verb)\n\nverbs:\n");
    for (size_t i = 0; verbs[i].name; i++) printf("  %-14s %s\n", verbs[i].name, verbs[i].summary);
    printf("\n  --version      BLAS, threads and backends in this build\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_help();
        return ETM_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        print_version();
        return ETM_EXIT_OK;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        print_help();
        return ETM_EXIT_OK;
    }
    if (check_blas_runtime() != 0) return ETM_EXIT_FAIL;
    for (size_t i = 0; verbs[i].name; i++)
        if (!strcmp(argv[1], verbs[i].name)) return verbs[i].run(argc - 1, argv + 1);
    fprintf(stderr, "etmoe: unknown verb '%s' (run 'etmoe --help')\n", argv[1]);
    return ETM_EXIT_USAGE;
}
