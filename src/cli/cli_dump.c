/* cli_dump.c: `etmoe dump` (one training forward+backward of a checkpoint on a fixed batch,
 * written as a dump file, doc/dump-format.md) and `etmoe compare` (two dump files, tensor by
 * tensor, within tolerances). */
#include <config.h>

#include "backend.h"
#include "checkpoint.h"
#include "cli.h"
#include "cli_checkpoint.h"
#include "common.h"
#include "dump.h"
#include "loader.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse_double(const char *text, double *out) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= 0)) return -1;
    *out = v;
    return 0;
}

/* ---- dump ---------------------------------------------------------------------------------- */
static void dump_usage(void) {
    printf("usage: etmoe dump CHECKPOINT --data SHARDS --out STATE.safetensors [--batch B] [--backend NAME]\n"
           "\n"
           "Runs one forward and backward pass of the checkpoint's model in training mode on a fixed\n"
           "batch, the first B sequences of the shards in validation order, and writes the inputs,\n"
           "targets, logits, per-token losses, loss, every parameter gradient and each MoE layer's\n"
           "routing (mask, router logits, gates, thresholds) to one safetensors file\n"
           "(doc/dump-format.md), for comparing backends or frameworks with `etmoe compare`.\n"
           "The router state is not stepped; the checkpoint is only read.\n"
           "\n"
           "  --data SHARDS    token shards (a glob, e.g. 'runs/data/austen/val_*.bin')\n"
           "  --out FILE       the dump file to write (atomically)\n"
           "  --batch B        sequences in the batch (default: the config's batch_size)\n"
           "  --backend NAME   compute backend (default: the config's backend)\n"
           "  --help           this text\n");
}

int cmd_dump(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL, *out = NULL, *backend = NULL, *batch_text = NULL;
    const cli_option opts[] = {
        {"--data", &data, NULL},
        {"--out", &out, NULL},
        {"--batch", &batch_text, NULL},
        {"--backend", &backend, NULL},
    };
    int parsed = cli_parse_options("dump", argc, argv, opts, ETM_ARRAY_LEN(opts), "checkpoint", &ckpt, dump_usage);
    if (parsed != CLI_PARSED) return parsed == CLI_HELP_SHOWN ? ETM_EXIT_OK : parsed;
    if (!ckpt) return cli_usage_error("dump", "no checkpoint given");
    if (!data) return cli_usage_error("dump", "--data SHARDS is required");
    if (!out) return cli_usage_error("dump", "--out FILE is required");
    cli_ckpt c;
    int rc = cli_ckpt_open(&c, "dump", ckpt);
    if (rc != ETM_EXIT_OK) return rc;
    const etm_hparams *hp = &c.hp;
    long B = hp->batch_size;
    if (batch_text && cli_parse_long(batch_text, 1, 1 << 20, &B) != 0)
        return cli_usage_error("dump", "--batch must be an integer in 1..%d, not '%s'", 1 << 20, batch_text);
    rc = cli_ckpt_load(&c, backend, (int)B);
    if (rc != ETM_EXIT_OK) {
        cli_ckpt_close(&c);
        return rc;
    }
    rc = ETM_EXIT_FAIL;
    etm_loader *ld = NULL;
    int32_t *inputs = NULL, *targets = NULL;
    ld = etm_loader_open(data, (int)B, hp->seq_len, hp->seed, 0, hp->vocab_size, &c.err);
    if (!ld) goto done;
    inputs = etm_malloc((size_t)B * hp->seq_len * sizeof(int32_t));
    targets = etm_malloc((size_t)B * hp->seq_len * sizeof(int32_t));
    if (etm_loader_next(ld, inputs, targets, &c.err) != 0) goto done;
    double loss;
    if (etm_dump_write(c.m, inputs, targets, (int)B, ckpt, out, &loss, &c.err) != 0) goto done;
    printf("wrote %s: batch %ld x %d tokens, loss %.6f, backend %s\n", out, B, hp->seq_len, loss, c.be->name);
    rc = ETM_EXIT_OK;
done:
    if (rc != ETM_EXIT_OK) cli_ckpt_fail(&c);
    free(inputs);
    free(targets);
    etm_loader_free(ld);
    cli_ckpt_close(&c);
    return rc;
}

/* ---- compare ------------------------------------------------------------------------------- */
static void compare_usage(const etm_compare_opts *d) {
    printf("usage: etmoe compare A B [--rtol R] [--atol A] [--max-flips N] [--list N]\n"
           "\n"
           "Compares two dump files (etmoe dump; any two safetensors files work) tensor by tensor and\n"
           "prints a table: max absolute and relative error, normalised error ||a-b|| / max(||a||, ||b||),\n"
           "elements beyond tolerance and NaN counts. Integer tensors must be equal. For the routing\n"
           "masks it counts the disagreements and lists each with the router logits on both sides and\n"
           "their distance from the thresholds.\n"
           "\n"
           "  --rtol R        relative tolerance (default %g): |a-b| <= atol + rtol max(|a|, |b|)\n"
           "  --atol A        absolute tolerance (default %g)\n"
           "  --max-flips N   routing disagreements allowed in total (default %ld)\n"
           "  --list N        disagreements listed per layer (default %d)\n"
           "  --help          this text\n"
           "\n"
           "Exit status: 0 within tolerance, 1 beyond it (or a file that cannot be read), 2 usage error.\n",
           d->rtol, d->atol, d->max_flips, d->max_listed);
}

int cmd_compare(int argc, char **argv) {
    etm_compare_opts o;
    etm_compare_opts_default(&o);
    const char *files[2] = {NULL, NULL};
    int n_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        int missing = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            compare_usage(&o);
            return ETM_EXIT_OK;
        }
        if (cli_option_value(argc, argv, &i, "--rtol", &v, &missing)) {
            if (missing || parse_double(v, &o.rtol)) return cli_usage_error("compare", "--rtol needs a number >= 0");
        } else if (cli_option_value(argc, argv, &i, "--atol", &v, &missing)) {
            if (missing || parse_double(v, &o.atol)) return cli_usage_error("compare", "--atol needs a number >= 0");
        } else if (cli_option_value(argc, argv, &i, "--max-flips", &v, &missing)) {
            long n;
            if (missing || cli_parse_long(v, 0, 1L << 40, &n))
                return cli_usage_error("compare", "--max-flips needs a count >= 0");
            o.max_flips = n;
        } else if (cli_option_value(argc, argv, &i, "--list", &v, &missing)) {
            long n;
            if (missing || cli_parse_long(v, 0, 1 << 30, &n)) return cli_usage_error("compare", "--list needs a count >= 0");
            o.max_listed = (int)n;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error("compare", "unknown option '%s'", a);
        } else {
            if (n_files == 2) return cli_usage_error("compare", "two files only (a third: '%s')", a);
            files[n_files++] = a;
        }
    }
    if (n_files != 2) return cli_usage_error("compare", "two dump files are needed");
    etm_error err = {{0}};
    for (int k = 0; k < 2; k++) {
        int fd = etm_open_regular(files[k], "dump", NULL, &err);
        if (fd < 0) return cli_input_error("compare", "%s", err.msg);
        close(fd);
    }
    etm_compare_result r;
    int ok = etm_dump_compare(files[0], files[1], &o, stdout, &r, &err);
    if (ok < 0) {
        fprintf(stderr, "etmoe compare: %s\n", err.msg);
        return ETM_EXIT_FAIL;
    }
    etm_compare_result_free(&r);
    return ok ? ETM_EXIT_OK : ETM_EXIT_FAIL;
}
