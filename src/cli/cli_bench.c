/* cli_bench.c: the `etmoe bench` verb: training-step throughput of the model a config describes
 * (tokens/s, GFLOP/s, ratio to the GEMM ceiling, optimizer time apart; src/bench.h). */
#include <config.h>

#include "backend.h"
#include "bench.h"
#include "cli.h"
#include "comm_model.h"
#include "common.h"
#include "hparams.h"

#ifdef ETM_HAVE_MPI
#include "comm_mpi.h"
#endif

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    printf("usage: etmoe bench CONFIG [key=value...] [--steps N] [--warmup N] [--profile]\n"
           "                   [--backend NAME]\n"
           "       etmoe bench CONFIG [key=value...] --comm-model [--ranks N]\n"
           "\n"
           "Times training steps of the model CONFIG describes (a config file or a preset name such\n"
           "as 'bench' or 'demo'; key=value overrides any setting) on random tokens: batch_size\n"
           "sequences of seq_len tokens per step, no data needed. Each step is zero_grad + forward\n"
           "with targets, backward, then the optimizer step (timed apart). Reports tokens/s and\n"
           "GFLOP/s of forward + backward, their ratio to a GEMM ceiling measured just before and\n"
           "after (cblas_sgemm on all threads for the cpu backend), and the optimizer's time.\n"
           "\n"
           "FLOPs per token = 3 * (2 * active matmul parameters + n_layer * 2 * 2 * n_head *\n"
           "head_dim * (seq_len + 1) / 2): projections, dense MLP or router + shared + routed\n"
           "experts (measured mean per token), LM head, causal attention; backward = 2 x forward.\n"
           "The optimizer counts Newton-Schulz products: ns_steps * (4 s^2 l + 2 s^3) per Muon\n"
           "matrix, s and l its smaller and larger side.\n"
           "\n"
           "Under mpirun (a build with MPI) every rank runs the configured batch and a step is the\n"
           "data-parallel step of doc/distributed.md: the gradient reduce, the router records'\n"
           "all-gather, the optimizer on the rank's share of the Muon matrices and the Muon\n"
           "exchange; rank 0 prints, with every rank's figures (min / max over ranks), the total\n"
           "tokens/s and the time spent inside the communication calls.\n"
           "\n"
           "ET layers route by expert choice during the first et_warmup_steps steps: pass\n"
           "et_warmup_steps=1 to time threshold routing after the one warm-up step.\n"
           "\n"
           "  --steps N        timed steps (default 3)\n"
           "  --warmup N       untimed steps before them (default 1)\n"
           "  --profile        also time every backend operation, for forward + backward and for\n"
           "                   the optimizer (synchronises after each operation)\n"
           "  --backend NAME   compute backend (default: the config's backend)\n"
           "  --comm-model     runs nothing: prints, on paper, the bytes one data-parallel step moves\n"
           "                   per rank (gradient reduce, Muon exchange, router records) for the\n"
           "                   config's grad_accum micro-batches split over N ranks, and their time\n"
           "                   over NVLink and InfiniBand against the step's compute at 40%% MFU of\n"
           "                   an H100 (src/bench/comm_model.h states the assumptions)\n"
           "  --ranks N        ranks for --comm-model (default 8; must divide grad_accum)\n"
           "  --help           this text\n"
           "\n"
           "example (`make bench`): etmoe bench bench et_warmup_steps=1\n"
           "                        etmoe bench bench router=dense\n"
           "                        mpirun -np 2 etmoe bench bench router=dense\n");
}

static int parse_int(const char *text, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

int cmd_bench(int argc, char **argv) {
    const char *config = NULL, *backend = NULL, *steps_text = NULL, *warmup_text = NULL;
    const char *ranks_text = NULL;
    int comm_model = 0;
    etm_bench_options opt;
    etm_bench_default_options(&opt);
    char **overrides = etm_malloc((size_t)(argc > 0 ? argc : 1) * sizeof *overrides);
    int n_overrides = 0, rc = ETM_EXIT_FAIL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int missing = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage();
            rc = ETM_EXIT_OK;
            goto done;
        }
        if (!strcmp(a, "--profile")) {
            opt.profile = 1;
            continue;
        }
        if (!strcmp(a, "--comm-model")) {
            comm_model = 1;
            continue;
        }
        if (cli_option_value(argc, argv, &i, "--steps", &steps_text, &missing) ||
            cli_option_value(argc, argv, &i, "--warmup", &warmup_text, &missing) ||
            cli_option_value(argc, argv, &i, "--backend", &backend, &missing) ||
            cli_option_value(argc, argv, &i, "--ranks", &ranks_text, &missing)) {
            if (missing) {
                rc = cli_usage_error("bench", "option '%s' needs a value", a);
                goto done;
            }
            continue;
        }
        if (a[0] == '-' && a[1]) {
            rc = cli_usage_error("bench", "unknown option '%s'", a);
            goto done;
        }
        if (strchr(a, '=')) {
            overrides[n_overrides++] = argv[i];
        } else if (config) {
            rc = cli_usage_error("bench", "one config only ('%s' and '%s')", config, a);
            goto done;
        } else {
            config = a;
        }
    }
    if (!config) {
        rc = cli_usage_error("bench", "no config given (a file or a preset such as 'bench')");
        goto done;
    }
    if (steps_text && parse_int(steps_text, 1, 1000000, &opt.steps) != 0) {
        rc = cli_usage_error("bench", "--steps must be a positive integer, not '%s'", steps_text);
        goto done;
    }
    if (warmup_text && parse_int(warmup_text, 0, 1000000, &opt.warmup) != 0) {
        rc = cli_usage_error("bench", "--warmup must be a non-negative integer, not '%s'",
                             warmup_text);
        goto done;
    }

    etm_error err = {{0}};
    etm_hparams hp;
    if (etm_hparams_configure(&hp, config, n_overrides, overrides, &err) != 0) {
        rc = cli_usage_error("bench", "%s", err.msg);
        goto done;
    }
    if (ranks_text && !comm_model) {
        rc = cli_usage_error("bench", "--ranks goes with --comm-model (under mpirun the ranks are mpirun's)");
        goto done;
    }
    if (comm_model) {
        int ranks = 8;
        if (ranks_text && parse_int(ranks_text, 1, 1000000, &ranks) != 0) {
            rc = cli_usage_error("bench", "--ranks must be a positive integer, not '%s'", ranks_text);
            goto done;
        }
        etm_comm_machine mc;
        etm_comm_machine_default(&mc);
        etm_comm_model cm;
        if (etm_comm_model_compute(&hp, ranks, &mc, &cm, &err) != 0) {
            rc = cli_usage_error("bench", "%s", err.msg);
            goto done;
        }
        etm_comm_model_print(stdout, config, &cm, &mc);
        rc = ETM_EXIT_OK;
        goto done;
    }
#ifdef ETM_HAVE_MPI
    /* under mpirun every rank runs the configured batch (bench.h); without it, one rank */
    opt.comm = etm_comm_mpi_create(NULL, NULL, &err);
    if (!opt.comm) {
        fprintf(stderr, "etmoe bench: %s\n", err.msg);
        goto done;
    }
#endif
    int rank = opt.comm ? opt.comm->rank : 0, ranks = opt.comm ? opt.comm->size : 1;
    etm_backend *be = etm_backend_create(backend ? backend : hp.backend, &err);
    if (!be) {
        fprintf(stderr, "etmoe bench: rank %d: %s\n", rank, err.msg);
        if (ranks > 1) opt.comm->abort(opt.comm, ETM_EXIT_FAIL);
        goto done;
    }
    if (rank != 0) { /* rank 0 prints; the others' figures reach it in etm_bench_run */
        etm_bench_result *r = etm_malloc(sizeof *r);
        if (etm_bench_run(be, &hp, &opt, r, &err) != 0) {
            fprintf(stderr, "etmoe bench: rank %d: %s\n", rank, err.msg);
            fflush(stderr);
            opt.comm->abort(opt.comm, ETM_EXIT_FAIL);
        }
        free(r);
        etm_backend_free(be);
        rc = ETM_EXIT_OK;
        goto done;
    }
    printf("etmoe bench %s", config);
    for (int i = 0; i < n_overrides; i++) printf(" %s", overrides[i]);
    printf(": %s, d_model %d, %d layers, %d heads (%d kv), seq_len %d, vocabulary %d\n",
           etm_router_kind_name(hp.router), hp.d_model, hp.n_layer, hp.n_head, hp.n_kv_head, hp.seq_len,
           hp.vocab_size);
    /* the settings that most change timings: OpenMP's on a shared machine (doc/performance.md),
     * the CUDA backend's GEMM precision (doc/cuda.md) */
    const char *env[] = {"OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "ETM_CUDA_GEMM"};
    printf("  environment:");
    for (size_t i = 0; i < ETM_ARRAY_LEN(env); i++)
        printf(" %s=%s", env[i], getenv(env[i]) ? getenv(env[i]) : "(unset)");
    printf("\n");
    fflush(stdout);
    if (ranks > 1)
        printf("  MPI: %d ranks, each runs batch_size %d x seq_len %d (doc/distributed.md)\n", ranks,
               hp.batch_size, hp.seq_len);
    fflush(stdout);
    etm_bench_result *r = etm_malloc(sizeof *r);
    if (etm_bench_run(be, &hp, &opt, r, &err) != 0) {
        fprintf(stderr, "etmoe bench: %s\n", err.msg);
        fflush(stderr);
        if (ranks > 1) opt.comm->abort(opt.comm, ETM_EXIT_FAIL);
    } else {
        etm_bench_print(stdout, r);
        if (hp.router == ETM_ROUTER_ET && r->timed_threshold_steps < r->steps)
            printf("  note: %d timed step%s routed by expert choice (ET warm-up, et_warmup_steps = "
                   "%d); pass et_warmup_steps=1 to time threshold routing\n",
                   r->steps - r->timed_threshold_steps,
                   r->steps - r->timed_threshold_steps == 1 ? "" : "s", hp.et_warmup_steps);
        rc = ETM_EXIT_OK;
    }
    free(r);
    etm_backend_free(be);
done:
    if (opt.comm) opt.comm->destroy(opt.comm);
    free(overrides);
    return rc;
}
