/* cli_prepare.c: `etmoe prepare`, text files to train and validation token shards. */
#include <config.h>

#include "cli.h"
#include "common.h"
#include "prepare.h"
#include "shard.h"
#include "tokenizer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void print_usage(void) {
    printf("usage: etmoe prepare --tokenizer T --out DIR [options] FILES...\n"
           "\n"
           "Tokenizes each text file as one document and writes token shards in llm.c's format\n"
           "(doc/data-format.md): DIR/train_000000.bin, ... and DIR/val_000000.bin, ...\n"
           "Each document is split: its first tokens go to training and the last F of them to\n"
           "validation, so every document is in both sets and no validation text is trained on.\n"
           "Both parts start with the <|endoftext|> token, as llm.c starts every document.\n"
           "\n"
           "  --tokenizer T       a merges file, or a shipped tokenizer's name (gpt2, austen)\n"
           "  --out DIR           output directory (created if missing)\n"
           "  --val-fraction F    share of each document for validation, in [0, 1) (default %g)\n"
           "  --shard-tokens N    tokens per shard file, at most (default %llu)\n"
           "  --force             replace shards already in DIR (stale higher-numbered ones are removed)\n"
           "  --help              this text\n"
           "\n"
           "example: etmoe prepare --tokenizer austen --out runs/austen-data $ETM_DATA/austen/*.txt\n",
           ETM_PREPARE_VAL_FRACTION, (unsigned long long)ETM_PREPARE_SHARD_TOKENS);
}

/* Matches "--name VALUE" and "--name=VALUE"; advances *i past what it used. */
/* Thousands separators make token counts readable. */
static const char *with_commas(char *buf, size_t len, uint64_t v) {
    char digits[32];
    int n = snprintf(digits, sizeof digits, "%llu", (unsigned long long)v);
    size_t o = 0;
    for (int i = 0; i < n && o + 2 < len; i++) {
        if (i > 0 && (n - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

static void report_file(void *ctx, const char *path, uint64_t train, uint64_t val) {
    (void)ctx;
    char a[32], b[32];
    printf("  %s: %s train + %s val tokens\n", path, with_commas(a, sizeof a, train), with_commas(b, sizeof b, val));
    fflush(stdout);
}

static void report_split(const char *dir, const char *split, uint64_t tokens, int n_shards) {
    char a[32], first[4096], last[4096];
    printf("%-5s %s tokens in %d shard%s", split, with_commas(a, sizeof a, tokens), n_shards, n_shards == 1 ? "" : "s");
    if (n_shards == 0) {
        printf("\n");
        return;
    }
    etm_prepare_shard_path(first, sizeof first, dir, split, 0);
    etm_prepare_shard_path(last, sizeof last, dir, split, n_shards - 1);
    if (n_shards == 1) printf(": %s\n", first);
    else printf(": %s ... %s\n", first, last);
}

int cmd_prepare(int argc, char **argv) {
    const char *verb = "prepare";
    const char *tok_name = NULL, *out = NULL, *frac_s = NULL, *shard_s = NULL;
    etm_prepare_opts opts;
    etm_prepare_defaults(&opts);
    const char **files = etm_calloc((size_t)argc, sizeof *files);
    int n_files = 0, rc = ETM_EXIT_OK;
    int only_files = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int missing = 0;
        if (only_files || a[0] != '-' || a[1] == '\0') {
            files[n_files++] = a;
        } else if (!strcmp(a, "--")) {
            only_files = 1;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            print_usage();
            free(files);
            return ETM_EXIT_OK;
        } else if (!strcmp(a, "--force")) {
            opts.force = 1;
        } else if (cli_option_value(argc, argv, &i, "--tokenizer", &tok_name, &missing) ||
                   cli_option_value(argc, argv, &i, "--out", &out, &missing) ||
                   cli_option_value(argc, argv, &i, "--val-fraction", &frac_s, &missing) ||
                   cli_option_value(argc, argv, &i, "--shard-tokens", &shard_s, &missing)) {
            if (missing) {
                free(files);
                return cli_usage_error(verb, "option %s needs a value", a);
            }
        } else {
            free(files);
            return cli_usage_error(verb, "unknown option '%s'", a);
        }
    }
    if (!tok_name || !*tok_name) rc = cli_usage_error(verb, "--tokenizer is required (a merges file, or gpt2, austen)");
    else if (!out || !*out) rc = cli_usage_error(verb, "--out DIR is required");
    else if (n_files == 0) rc = cli_usage_error(verb, "no input files given");
    if (rc == ETM_EXIT_OK && frac_s) {
        char *end = NULL;
        errno = 0;
        opts.val_fraction = strtod(frac_s, &end);
        if (errno || end == frac_s || *end || !(opts.val_fraction >= 0.0 && opts.val_fraction < 1.0))
            rc = cli_usage_error(verb, "--val-fraction '%s': expected a number in [0, 1)", frac_s);
    }
    if (rc == ETM_EXIT_OK && shard_s) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(shard_s, &end, 10);
        if (errno || end == shard_s || *end || shard_s[0] == '-' || v < 1 || v > ETM_SHARD_MAX_TOKENS)
            rc = cli_usage_error(verb, "--shard-tokens '%s': expected a whole number from 1 to %llu", shard_s,
                                 (unsigned long long)ETM_SHARD_MAX_TOKENS);
        opts.shard_tokens = v;
    }
    /* Every input must be there before any shard is written. */
    for (int f = 0; f < n_files && rc == ETM_EXIT_OK; f++) {
        etm_error why = {{0}};
        int fd = etm_open_regular(files[f], "text", NULL, &why);
        if (fd < 0) rc = cli_usage_error(verb, "%s", why.msg);
        else close(fd);
    }
    if (rc != ETM_EXIT_OK) {
        free(files);
        return rc;
    }

    etm_error err = {{0}};
    etm_tokenizer *tok = etm_tokenizer_load(tok_name, &err);
    if (!tok) {
        free(files);
        return cli_usage_error(verb, "--tokenizer %s: %s", tok_name, err.msg);
    }
    printf("prepare: %d file%s, tokenizer %s (%d ids, <|endoftext|> = %d), validation = last %g of each\n",
           n_files, n_files == 1 ? "" : "s", tok_name, etm_tokenizer_vocab_size(tok), (int)etm_tokenizer_eot(tok),
           opts.val_fraction);
    opts.on_file = report_file;
    etm_prepare_stats stats;
    if (etm_prepare(tok, files, n_files, out, &opts, &stats, &err) != 0) {
        fprintf(stderr, "etmoe prepare: %s\n", err.msg);
        rc = ETM_EXIT_FAIL;
    } else {
        report_split(out, "train", stats.train_tokens, stats.n_train_shards);
        report_split(out, "val", stats.val_tokens, stats.n_val_shards);
        if (stats.n_val_shards == 0) printf("(no validation shard: --val-fraction is 0 or the files are tiny)\n");
    }
    etm_tokenizer_free(tok);
    free(files);
    return rc;
}
