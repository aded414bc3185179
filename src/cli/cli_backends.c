/* cli_backends.c: the `etmoe backends` verb: lists the compute backends built into this program,
 * whether each can run on this machine, and (--bench) the speed of each one's heaviest operations
 * (GEMMs against the cblas_sgemm ceiling, grouped expert GEMMs, attention, cross-entropy). */
#include <config.h>

#include "backend.h"
#include "cli.h"
#include "common.h"
#include "backend_bench.h"
#include "cpu/cpu_bench.h"

#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static void usage(void) {
    printf("usage: etmoe backends [--bench]\n\n"
           "Lists the compute backends built into this program and whether each can run here.\n\n"
           "  --bench   also time each backend on transformer-sized work (best of 10 runs):\n"
           "            gemm and cblas_sgemm with all threads (the machine's ceiling), a grouped\n"
           "            GEMM over 16 experts, causal attention and a 50304-way cross-entropy\n");
}

/* (M, N, K) of the products --bench measures: a 4x MLP up projection, its down projection, and
 * an expert-sized one. */
static const int bench_shapes[][3] = {{512, 1024, 256}, {512, 256, 1024}, {256, 1024, 256}};

/* Timings of one backend's heaviest operations at the demo model's sizes (d_model 256, 4 heads,
 * 256-token sequences, 16 experts of width 1024, the GPT-2 vocabulary). */
static void bench_backend(etm_backend *be) {
    for (size_t s = 0; s < ETM_ARRAY_LEN(bench_shapes); s++) {
        int M = bench_shapes[s][0], N = bench_shapes[s][1], K = bench_shapes[s][2];
        printf("       gemm %4dx%4dx%4d: %7.1f GFLOP/s\n", M, N, K,
               etm_backend_gemm_gflops(be, M, N, K, 10));
    }
    int rows[16], total = 0;
    for (int e = 0; e < 16; e++) total += rows[e] = 64 + (e * 181) % 449; /* 64..512 */
    printf("       gemm_grouped 16 experts (%d rows) x 1024 x 256: %7.1f GFLOP/s\n", total,
           etm_backend_grouped_gflops(be, 16, rows, 1024, 256, 10));
    double bwd;
    double fwd = etm_backend_attention_ms(be, 8, 256, 256, 4, 4, 64, 10, &bwd);
    printf("       attention B8 T256 H4 hd64: forward %.2f ms, backward %.2f ms\n", fwd, bwd);
    fwd = etm_backend_xent_ms(be, 512, 50304, 10, &bwd);
    printf("       xent 512 x 50304: forward %.1f ms, backward %.1f ms\n", fwd, bwd);
}

int cmd_backends(int argc, char **argv) {
    int bench = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            return ETM_EXIT_OK;
        }
        if (!strcmp(argv[i], "--bench"))
            bench = 1;
        else
            return cli_usage_error("backends", "unknown option '%s'", argv[i]);
    }
#ifdef _OPENMP
    int threads = omp_get_max_threads();
#else
    int threads = 1;
#endif
    int usable = 0;
    for (const char *const *name = etm_backend_names(); *name; name++) {
        etm_error err = {{0}};
        etm_backend *be = etm_backend_create(*name, &err);
        if (!be) {
            printf("%-6s unavailable: %s\n", *name, err.msg);
            continue;
        }
        usable++;
        if (!strcmp(*name, "cpu"))
            printf("%-6s available (%d OpenMP thread%s)\n", *name, threads,
                   threads == 1 ? "" : "s");
        else
            printf("%-6s available\n", *name);
        if (bench) bench_backend(be);
        etm_backend_free(be);
    }
    if (bench)
        for (size_t s = 0; s < ETM_ARRAY_LEN(bench_shapes); s++) {
            int M = bench_shapes[s][0], N = bench_shapes[s][1], K = bench_shapes[s][2];
            printf("ceiling: cblas_sgemm %4dx%4dx%4d: %7.1f GFLOP/s\n", M, N, K,
                   etm_cpu_sgemm_gflops(M, N, K, 10));
        }
    return usable ? ETM_EXIT_OK : ETM_EXIT_FAIL;
}
