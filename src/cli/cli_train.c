/* cli_train.c: the verbs `etmoe train` (a run from a config, or its resumption) and `etmoe eval`
 * (validation loss and perplexity of a checkpoint); the work is in trainer.c. */
#include <config.h>

#include "checkpoint.h"
#include "cli.h"
#include "cli_checkpoint.h"
#include "common.h"
#include "hparams.h"
#include "model.h"
#include "tokenizer.h"
#include "trainer.h"
#ifdef ETM_HAVE_MPI
#include "comm_mpi.h"
#endif
#ifdef ETM_HAVE_NCCL
#include "comm_nccl.h"
#endif

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The one global the trainer allows itself: the signal that asked the run to stop (0: none). */
static volatile sig_atomic_t stop_signal = 0;

static void on_stop_signal(int sig) { stop_signal = sig; }

/* SIGINT / SIGTERM ask the run to finish its step and checkpoint. SA_RESETHAND restores the
 * default action, so a second Ctrl-C kills at once. */
static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* ---- train --------------------------------------------------------------------------------- */

static void train_usage(void) {
    printf("usage: etmoe train CONFIG [key=value...] [--backend NAME] [--resume] [--force]\n"
           "                   [--stop-at N] [--quiet] [--dry-run] [--check-replicas]\n"
           "\n"
           "Trains the model CONFIG describes: a config file's path, or a preset name (demo, bench,\n"
           "d12, d20 in the data directory's configs/). key=value arguments override its settings\n"
           "(doc/config.md; `--help-keys` lists them). Everything goes to the run directory out_dir:\n"
           "  config.conf          the effective configuration, written at the start\n"
           "  latest.safetensors   the checkpoint, every ckpt_every steps and at the end\n"
           "  metrics.jsonl        one JSON object per step (doc/training.md lists the keys)\n"
           "Progress goes to stderr. A directory holding a checkpoint or another configuration is\n"
           "refused unless --resume or --force.\n"
           "\n"
           "  --backend NAME  compute backend, cpu or cuda (the same as backend=NAME; `etmoe\n"
           "                backends` lists those this build has)\n"
           "  --resume      continue exactly from out_dir/latest.safetensors (keys that shape the\n"
           "                model, the optimizer state or the data order must be unchanged)\n"
           "  --force       start over in an out_dir that holds another run (its checkpoint goes)\n"
           "  --stop-at N   stop with a checkpoint after step N (max_steps still sets the schedule;\n"
           "                --resume continues as if there had been no stop)\n"
           "  --quiet       no progress lines\n"
           "  --dry-run     print the parameter count and memory estimate, then stop (nothing written)\n"
           "  --check-replicas  under mpirun: after every step, check that every rank holds the\n"
           "                same parameters, optimizer and router state as rank 0 (doc/distributed.md)\n"
           "  --help-keys   every configuration key with its default and meaning\n"
           "  --help        this text\n"
           "\n"
           "Ctrl-C (SIGINT) or SIGTERM: the current step finishes, a checkpoint is saved, and etmoe\n"
           "exits with 128 + the signal number (130 for Ctrl-C); a second Ctrl-C kills at once.\n"
           "A non-finite loss or gradient stops the run with exit status 1 and no checkpoint of the\n"
           "bad step: latest.safetensors stays the last good one.\n"
           "\n"
           "example: etmoe train demo max_steps=100 out_dir=runs/short\n");
}

int cmd_train(int argc, char **argv) {
    const char *verb = "train";
    const char *config = NULL, *stop_s = NULL, *backend = NULL;
    /* argv's key=value arguments, then backend=NAME for --backend (so it wins). */
    char **overrides = etm_calloc((size_t)argc + 1, sizeof *overrides);
    char *backend_override = NULL;
    int n_over = 0, quiet = 0, dry_run = 0;
    etm_train_options opt;
    etm_train_options_init(&opt);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int missing = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            train_usage();
            free(overrides);
            return ETM_EXIT_OK;
        } else if (!strcmp(a, "--help-keys")) {
            etm_hparams_print_help(stdout);
            free(overrides);
            return ETM_EXIT_OK;
        } else if (!strcmp(a, "--resume")) {
            opt.resume = 1;
        } else if (!strcmp(a, "--force")) {
            opt.force = 1;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "--dry-run")) {
            dry_run = 1;
        } else if (!strcmp(a, "--check-replicas")) {
            opt.check_replicas = 1;
        } else if (cli_option_value(argc, argv, &i, "--stop-at", &stop_s, &missing)) {
            if (missing) {
                free(overrides);
                return cli_usage_error(verb, "option --stop-at needs a value");
            }
        } else if (cli_option_value(argc, argv, &i, "--backend", &backend, &missing)) {
            if (missing) {
                free(overrides);
                return cli_usage_error(verb, "option --backend needs a value");
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            free(overrides);
            return cli_usage_error(verb, "unknown option '%s'", a);
        } else if (strchr(a, '=')) {
            overrides[n_over++] = argv[i];
        } else if (!config) {
            config = a;
        } else {
            free(overrides);
            return cli_usage_error(verb, "unexpected argument '%s' (one CONFIG, then key=value overrides)", a);
        }
    }
    if (!config) {
        free(overrides);
        return cli_usage_error(verb, "no CONFIG given (a config file or a preset name such as demo)");
    }
    if (opt.resume && opt.force) {
        free(overrides);
        return cli_usage_error(verb, "--resume and --force contradict each other");
    }
    long stop_at = 0;
    if (stop_s && cli_parse_long(stop_s, 1, 1000000000, &stop_at) != 0) {
        free(overrides);
        return cli_usage_error(verb, "--stop-at '%s': expected a whole number of steps >= 1", stop_s);
    }
    opt.stop_at = (int)stop_at;
    if (backend) {
        size_t len = strlen("backend=") + strlen(backend) + 1;
        backend_override = etm_malloc(len);
        snprintf(backend_override, len, "backend=%s", backend);
        overrides[n_over++] = backend_override;
    }
    etm_error err = {{0}};
    etm_hparams hp;
    int configured = etm_hparams_configure(&hp, config, n_over, overrides, &err);
    free(overrides);
    free(backend_override);
    if (configured != 0) return cli_usage_error(verb, "%s", err.msg);
    /* Refusals before etm_train creates out_dir: a refused run leaves nothing behind. */
    int refused = cli_check_backend_name(verb, hp.backend);
    if (refused != ETM_EXIT_OK) return refused;
    etm_memory_estimate est;
    etm_model_memory_estimate(&hp, hp.batch_size, 1, &est);
    if (dry_run) {
        const double g = 1024.0 * 1024.0 * 1024.0;
        printf("%s: %.0f parameters; memory estimate for training with batch_size %d x seq_len %d:\n"
               "  parameters %.3f GiB, gradients %.3f GiB, optimizer state %.3f GiB,\n"
               "  activations %.3f GiB, routing %.3f GiB: total %.3f GiB (this machine: %.1f GiB)\n",
               config, est.n_params, hp.batch_size, hp.seq_len, est.params / g, est.grads / g, est.optimizer / g,
               est.activations / g, est.routing / g, est.total / g, etm_host_memory_bytes() / g);
    }
    refused = cli_ckpt_check_memory(verb, config, &hp, hp.batch_size, 1);
    if (refused != ETM_EXIT_OK || dry_run) return refused;

    opt.progress = quiet ? NULL : stderr;
    opt.stop_flag = &stop_signal;
    install_stop_handlers();
#ifdef ETM_HAVE_MPI
    /* a process started without mpirun is a job of one rank (doc/distributed.md) */
    opt.comm = etm_comm_mpi_create(NULL, NULL, &err);
    if (!opt.comm) {
        fprintf(stderr, "etmoe train: %s\n", err.msg);
        return ETM_EXIT_FAIL;
    }
#ifdef ETM_HAVE_NCCL
    /* GPU ranks: NCCL moves the gradients (the GPU is picked before the backend is created) */
    if (opt.comm->size > 1 && !strcmp(hp.backend, "cuda")) {
        etm_comm *nccl = etm_comm_nccl_create(opt.comm, &err);
        if (!nccl) {
            fprintf(stderr, "etmoe train: rank %d: %s\n", opt.comm->rank, err.msg);
            fflush(stderr);
            opt.comm->abort(opt.comm, ETM_EXIT_FAIL);
        }
        opt.comm = nccl;
    }
#endif
#endif
    etm_train_result res;
    int rc = etm_train(&hp, &opt, &res, &err);
    if (rc != 0) {
        if (opt.comm && opt.comm->size > 1)
            fprintf(stderr, "etmoe train: rank %d of %d: %s\n", opt.comm->rank, opt.comm->size, err.msg);
        else
            fprintf(stderr, "etmoe train: %s\n", err.msg);
        fflush(stderr);
        /* a failure only some ranks saw (a checkpoint rank 0 could not write) would leave the
         * others waiting in a collective: end the whole job */
        if (opt.comm && opt.comm->size > 1) opt.comm->abort(opt.comm, ETM_EXIT_FAIL);
    }
    if (opt.comm) opt.comm->destroy(opt.comm);
    if (rc != 0) return ETM_EXIT_FAIL;
    if (res.interrupted) return 128 + (int)stop_signal;
    return ETM_EXIT_OK;
}

/* ---- eval ---------------------------------------------------------------------------------- */

static void eval_usage(void) {
    printf("usage: etmoe eval CHECKPOINT [--data SHARDS] [--batches N] [--mode threshold|batch]\n"
           "                  [--backend NAME]\n"
           "\n"
           "Mean token cross-entropy (nats) and perplexity of a checkpoint's model on validation\n"
           "shards, each window of seq_len tokens once, in micro-batches of the run's batch_size,\n"
           "and bits per byte: the nats of the targets that are text / ln 2 / their UTF-8 bytes\n"
           "(decoded with the configuration's tokenizer; <|endoftext|> counts in neither), which\n"
           "compares across tokenizers.\n"
           "\n"
           "  --data SHARDS   shard glob (default: the checkpoint configuration's val_data)\n"
           "  --batches N     at most N micro-batches (default: all the data, once)\n"
           "  --mode M        threshold (default): routing as at inference, causal and per token:\n"
           "                  ET and EC models by their thresholds (the paper's protocol for\n"
           "                  evaluating EC models too), TC models by top-k;\n"
           "                  batch: ET and EC models by expert choice within each batch's routing\n"
           "                  pools (pool_seqs), as EC trains; not causal, and no state is updated.\n"
           "                  TC models route by top-k in both modes.\n"
           "  --backend NAME  compute backend (default: the checkpoint configuration's backend)\n"
           "  --help          this text\n"
           "\n"
           "example: etmoe eval runs/demo/latest.safetensors\n");
}

int cmd_eval(int argc, char **argv) {
    const char *verb = "eval";
    const char *path = NULL, *data = NULL, *batches_s = NULL, *mode_s = NULL, *backend = NULL;
    const cli_option opts[] = {
        {"--data", &data, NULL},
        {"--batches", &batches_s, NULL},
        {"--mode", &mode_s, NULL},
        {"--backend", &backend, NULL},
    };
    int parsed = cli_parse_options(verb, argc, argv, opts, ETM_ARRAY_LEN(opts), "checkpoint", &path, eval_usage);
    if (parsed != CLI_PARSED) return parsed == CLI_HELP_SHOWN ? ETM_EXIT_OK : parsed;
    if (!path) return cli_usage_error(verb, "no CHECKPOINT given");
    long batches = 0;
    if (batches_s && cli_parse_long(batches_s, 1, 1000000000, &batches) != 0)
        return cli_usage_error(verb, "--batches '%s': expected a whole number >= 1", batches_s);
    etm_eval_routing routing = ETM_EVAL_THRESHOLD;
    if (mode_s) {
        if (!strcmp(mode_s, "threshold")) routing = ETM_EVAL_THRESHOLD;
        else if (!strcmp(mode_s, "batch")) routing = ETM_EVAL_BATCH;
        else return cli_usage_error(verb, "--mode '%s': expected threshold or batch", mode_s);
    }
    cli_ckpt c;
    int rc = cli_ckpt_open(&c, verb, path);
    if (rc != ETM_EXIT_OK) return rc;
    etm_hparams hp = c.hp;
    if (!data) data = hp.val_data;
    if (!data[0]) return cli_usage_error(verb, "the checkpoint's configuration has no val_data: give --data");
    rc = cli_ckpt_load(&c, backend, hp.batch_size);
    if (rc != ETM_EXIT_OK) {
        cli_ckpt_close(&c);
        return rc;
    }
    rc = ETM_EXIT_FAIL;
    etm_model *m = c.m;
    etm_error err = {{0}};
    /* Bits per byte need the tokenizer; without it the loss is still right, so say so and go on. */
    int32_t *token_bytes = NULL;
    {
        etm_error terr = {{0}};
        etm_tokenizer *tok = etm_tokenizer_load(hp.tokenizer, &terr);
        if (tok) token_bytes = etm_tokenizer_byte_lengths(tok, hp.vocab_size, &terr);
        if (!token_bytes)
            fprintf(stderr, "etmoe eval: no bits per byte: tokenizer '%s': %s\n", hp.tokenizer, terr.msg);
        etm_tokenizer_free(tok);
    }
    etm_eval_result ev;
    /* at most `batches` micro-batches of sequences (0: all); more than INT_MAX means all too */
    int max_seqs = (int)ETM_MIN(batches * hp.batch_size, (long)INT_MAX);
    if (etm_evaluate_bytes(m, data, max_seqs, routing, token_bytes, &ev, &err) == 0) {
        printf("eval %s: %s router, %s routing\n", path, etm_router_kind_name(hp.router),
               routing == ETM_EVAL_BATCH && (hp.router == ETM_ROUTER_EC || hp.router == ETM_ROUTER_ET)
                   ? "batch (expert choice per pool)"
                   : "threshold (causal, per token)");
        printf("  data %s: %d sequences, %lld tokens\n", data, ev.sequences, (long long)ev.tokens);
        printf("  loss %.4f  perplexity %.2f", ev.loss, ev.perplexity);
        if (token_bytes) printf("  bits/byte %.4f (%lld bytes)", ev.bits_per_byte, (long long)ev.bytes);
        if (hp.router != ETM_ROUTER_DENSE) printf("  routed experts/token %.3f", ev.mean_experts);
        printf("\n");
        rc = ETM_EXIT_OK;
    } else {
        fprintf(stderr, "etmoe eval: %s\n", err.msg);
    }
    free(token_bytes);
    cli_ckpt_close(&c);
    return rc;
}
