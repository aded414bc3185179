/* cli_tokenize.c: the verbs `etmoe tokenize` (text <-> ids on stdin/stdout, and the tokenizer
 * benchmark) and `etmoe tokenizer train` (learn a BPE merges file from text files). */
#include <config.h>

#include "bpe_train.h"
#include "cli.h"
#include "common.h"
#include "tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Reads a whole stream (stdin) into a NUL-terminated buffer. */
/* Reads all of f (stdin), at most ETM_MAX_TEXT_BYTES; NULL on a read error or a longer stream
 * (*len is then ETM_MAX_TEXT_BYTES + 1). */
static char *read_stream(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = etm_malloc(cap);
    *len = 0;
    for (;;) {
        if (n + 1 >= cap) {
            if ((uint64_t)n > ETM_MAX_TEXT_BYTES) {
                free(buf);
                *len = (size_t)ETM_MAX_TEXT_BYTES + 1;
                return NULL;
            }
            buf = etm_realloc(buf, cap *= 2);
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f) || (uint64_t)n > ETM_MAX_TEXT_BYTES) {
        *len = ferror(f) ? 0 : (size_t)ETM_MAX_TEXT_BYTES + 1;
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void read_stream_error(size_t len) {
    if (len > ETM_MAX_TEXT_BYTES)
        fprintf(stderr, "etmoe tokenize: stdin: more than the limit of %llu bytes\n",
                (unsigned long long)ETM_MAX_TEXT_BYTES);
    else
        fprintf(stderr, "etmoe tokenize: error reading stdin\n");
}

/* The usage error for getopt's return c ('?' unknown option, ':' missing argument). */
static int option_error(const char *verb, int c, char **argv) {
    const char *arg = argv[optind - 1];
    if (c == ':') return cli_usage_error(verb, "option '%s' needs a value", arg);
    if (optopt && optopt != '?' && !strchr(arg, '=') && arg[1] != '-')
        return cli_usage_error(verb, "unknown option '-%c'", optopt);
    return cli_usage_error(verb, "unknown option '%s'", arg);
}

static int readable_file(const char *verb, const char *path) {
    etm_error err = {{0}};
    FILE *f = etm_fopen_regular(path, "text", NULL, &err);
    if (!f) return cli_usage_error(verb, "%s", err.msg);
    fclose(f);
    return 0;
}

/* ---- etmoe tokenize --------------------------------------------------------------------------- */

static void tokenize_help(void) {
    printf("usage: etmoe tokenize [--tokenizer NAME|FILE] [--decode | --bench [--repeat N] [FILES...]]\n"
           "\n"
           "Byte-level BPE in GPT-2's format. Without --decode or --bench, reads text (any bytes) on\n"
           "stdin and prints its token ids on one line, separated by spaces. The literal text\n"
           "<|endoftext|> becomes the end-of-text id.\n"
           "\n"
           "  -t, --tokenizer NAME|FILE  a merges file, or a shipped tokenizer: gpt2 (default), austen\n"
           "  -d, --decode               read ids (separated by white space) on stdin, write the bytes\n"
           "  -b, --bench [FILES...]     encode the files (or stdin), report MB/s and tokens/s, and\n"
           "                             check that decoding gives the bytes back\n"
           "  -r, --repeat N             with --bench: encode each file N times, report the fastest\n"
           "  -h, --help                 this help\n");
}

static int write_ids(const int32_t *ids, size_t n) {
    char buf[16];
    for (size_t i = 0; i < n; i++) {
        int l = snprintf(buf, sizeof buf, i + 1 < n ? "%ld " : "%ld", (long)ids[i]);
        if (fwrite(buf, 1, (size_t)l, stdout) != (size_t)l) return -1;
    }
    return fputc('\n', stdout) == EOF ? -1 : 0;
}

static int do_encode(const etm_tokenizer *tok) {
    size_t len;
    char *text = read_stream(stdin, &len);
    if (!text) {
        read_stream_error(len);
        return ETM_EXIT_FAIL;
    }
    size_t n;
    int32_t *ids = etm_tokenizer_encode(tok, text, len, &n);
    int bad = write_ids(ids, n) != 0 || fflush(stdout) != 0;
    free(ids);
    free(text);
    if (bad) {
        fprintf(stderr, "etmoe tokenize: error writing stdout\n");
        return ETM_EXIT_FAIL;
    }
    return ETM_EXIT_OK;
}

static int do_decode(const etm_tokenizer *tok) {
    size_t len;
    char *text = read_stream(stdin, &len);
    if (!text) {
        read_stream_error(len);
        return ETM_EXIT_FAIL;
    }
    size_t n = 0, cap = 1024;
    int32_t *ids = etm_malloc(cap * sizeof *ids);
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
        if (!*p && (size_t)(p - text) < len) { /* a NUL byte, not the end: ids are text */
            fprintf(stderr, "etmoe tokenize: stdin: a NUL byte at byte %zu (after value %zu): ids are decimal text\n",
                    (size_t)(p - text), n);
            free(ids);
            free(text);
            return ETM_EXIT_FAIL;
        }
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < INT32_MIN || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\n' && *end != '\t' && *end != '\r')) {
            size_t l = strcspn(p, " \n\t\r");
            fprintf(stderr, "etmoe tokenize: stdin: '%.*s' (value %zu) is not a token id\n", (int)ETM_MIN(l, 40),
                    p, n + 1);
            free(ids);
            free(text);
            return ETM_EXIT_FAIL;
        }
        if (n == cap) ids = etm_realloc(ids, (cap *= 2) * sizeof *ids);
        ids[n++] = (int32_t)v;
        p = end;
    }
    etm_error err = {{0}};
    size_t out_len;
    char *out = etm_tokenizer_decode(tok, ids, n, &out_len, &err);
    free(ids);
    free(text);
    if (!out) {
        fprintf(stderr, "etmoe tokenize: %s\n", err.msg);
        return ETM_EXIT_FAIL;
    }
    int bad = fwrite(out, 1, out_len, stdout) != out_len || fflush(stdout) != 0;
    free(out);
    if (bad) {
        fprintf(stderr, "etmoe tokenize: error writing stdout\n");
        return ETM_EXIT_FAIL;
    }
    return ETM_EXIT_OK;
}

/* Encodes one text `repeat` times, prints a line, adds to the totals; checks the round trip. */
static int bench_one(const etm_tokenizer *tok, const char *name, const char *text, size_t len, int repeat,
                     double *t_sum, size_t *tok_sum) {
    double best = 0;
    size_t n = 0;
    int32_t *ids = NULL;
    for (int r = 0; r < repeat; r++) {
        free(ids);
        double t0 = etm_now();
        ids = etm_tokenizer_encode(tok, text, len, &n);
        double t = etm_now() - t0;
        if (r == 0 || t < best) best = t;
    }
    etm_error err = {{0}};
    size_t out_len;
    char *back = etm_tokenizer_decode(tok, ids, n, &out_len, &err);
    int same = back && out_len == len && !memcmp(back, text, len);
    free(back);
    free(ids);
    double secs = best > 0 ? best : 1e-9;
    printf("%-28s %11zu %10zu %8.3f %9.2f %12.0f %6.3f  %s\n", name, len, n, best, len / 1e6 / secs, n / secs,
           n ? (double)len / (double)n : 0.0, same ? "ok" : "FAILED");
    *t_sum += best;
    *tok_sum += n;
    return same ? 0 : -1;
}

static int do_bench(const etm_tokenizer *tok, const char *tok_name, double load_s, int repeat, int nfiles,
                    char **files) {
    printf("tokenizer %s: vocabulary %d, loaded in %.3f s; encode on one thread, best of %d\n", tok_name,
           etm_tokenizer_vocab_size(tok), load_s, repeat);
    printf("%-28s %11s %10s %8s %9s %12s %6s  %s\n", "file", "bytes", "tokens", "seconds", "MB/s", "tokens/s",
           "B/tok", "round trip");
    double t_sum = 0;
    size_t b_sum = 0, tok_sum = 0;
    int failed = 0;
    etm_error err = {{0}};
    if (nfiles == 0) {
        size_t len;
        char *text = read_stream(stdin, &len);
        if (!text) {
            read_stream_error(len);
            return ETM_EXIT_FAIL;
        }
        failed |= bench_one(tok, "(stdin)", text, len, repeat, &t_sum, &tok_sum);
        b_sum += len;
        free(text);
    }
    for (int i = 0; i < nfiles; i++) {
        size_t len;
        char *text = etm_read_file(files[i], &len, &err);
        if (!text) {
            fprintf(stderr, "etmoe tokenize: %s\n", err.msg);
            return ETM_EXIT_FAIL;
        }
        const char *slash = strrchr(files[i], '/');
        failed |= bench_one(tok, slash ? slash + 1 : files[i], text, len, repeat, &t_sum, &tok_sum);
        b_sum += len;
        free(text);
    }
    if (nfiles > 1) {
        double secs = t_sum > 0 ? t_sum : 1e-9;
        printf("%-28s %11zu %10zu %8.3f %9.2f %12.0f %6.3f  %s\n", "total", b_sum, tok_sum, t_sum, b_sum / 1e6 / secs,
               tok_sum / secs, tok_sum ? (double)b_sum / (double)tok_sum : 0.0, failed ? "FAILED" : "ok");
    }
    if (failed) {
        fprintf(stderr, "etmoe tokenize: decoding did not give the input back\n");
        return ETM_EXIT_FAIL;
    }
    return ETM_EXIT_OK;
}

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'}, {"decode", no_argument, NULL, 'd'},
        {"bench", no_argument, NULL, 'b'},           {"repeat", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0},
    };
    const char *name = "gpt2";
    int decode = 0, bench = 0, repeat = 1, c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":t:dbr:h", opts, NULL)) != -1) {
        switch (c) {
        case 't': name = optarg; break;
        case 'd': decode = 1; break;
        case 'b': bench = 1; break;
        case 'r': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 1000)
                return cli_usage_error("tokenize", "--repeat wants a count from 1 to 1000, not '%s'", optarg);
            repeat = (int)v;
            break;
        }
        case 'h': tokenize_help(); return ETM_EXIT_OK;
        default: return option_error("tokenize", c, argv);
        }
    }
    if (decode && bench) return cli_usage_error("tokenize", "--decode and --bench do not go together");
    if (!bench && optind < argc) return cli_usage_error("tokenize", "unexpected argument '%s' (text comes on stdin)", argv[optind]);
    for (int i = optind; i < argc; i++)
        if (readable_file("tokenize", argv[i])) return ETM_EXIT_USAGE;
    etm_error err = {{0}};
    char path[4096];
    if (etm_tokenizer_path(name, path, sizeof path, &err) != 0) return cli_usage_error("tokenize", "%s", err.msg);
    if (readable_file("tokenize", path)) return ETM_EXIT_USAGE;
    double t0 = etm_now();
    etm_tokenizer *tok = etm_tokenizer_load(path, &err);
    double load_s = etm_now() - t0;
    if (!tok) {
        fprintf(stderr, "etmoe tokenize: %s\n", err.msg);
        return ETM_EXIT_FAIL;
    }
    int rc = bench ? do_bench(tok, path, load_s, repeat, argc - optind, argv + optind)
                   : decode ? do_decode(tok) : do_encode(tok);
    etm_tokenizer_free(tok);
    return rc;
}

/* ---- etmoe tokenizer train -------------------------------------------------------------------- */

static void tokenizer_help(void) {
    printf("usage: etmoe tokenizer train --vocab-size N --out FILE FILES...\n"
           "\n"
           "Learns a byte-level BPE tokenizer from text files, with GPT-2's pre-split, and writes its\n"
           "merges file in GPT-2's format (load it with --tokenizer FILE). The vocabulary counts the\n"
           "256 bytes, the merges and <|endoftext|>. Each step merges the most frequent pair; ties go\n"
           "to the pair lowest in byte order (left token's bytes, then right's). Deterministic.\n"
           "\n"
           "  -v, --vocab-size N  vocabulary size, at least 257 (default 4096)\n"
           "  -o, --out FILE      the merges file to write (replaced atomically)\n"
           "  -h, --help          this help\n");
}

static int tokenizer_train(int argc, char **argv) {
    static const struct option opts[] = {
        {"vocab-size", required_argument, NULL, 'v'},
        {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *verb = "tokenizer train", *out_path = NULL;
    long vocab = 4096;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":v:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'v': {
            char *end;
            vocab = strtol(optarg, &end, 10);
            if (*end || end == optarg || vocab < 257 || vocab > INT32_MAX / 2)
                return cli_usage_error(verb, "--vocab-size wants a number of at least 257, not '%s'", optarg);
            break;
        }
        case 'o': out_path = optarg; break;
        case 'h': tokenizer_help(); return ETM_EXIT_OK;
        default: return option_error(verb, c, argv);
        }
    }
    if (!out_path) return cli_usage_error(verb, "--out FILE is required");
    if (optind >= argc) return cli_usage_error(verb, "no input files");
    for (int i = optind; i < argc; i++)
        if (readable_file(verb, argv[i])) return ETM_EXIT_USAGE;

    etm_error err = {{0}};
    etm_bpe_trainer *tr = etm_bpe_trainer_create(&err);
    if (!tr) {
        fprintf(stderr, "etmoe %s: %s\n", verb, err.msg);
        return ETM_EXIT_FAIL;
    }
    double t0 = etm_now();
    size_t total = 0;
    for (int i = optind; i < argc; i++) {
        size_t len;
        char *text = etm_read_file(argv[i], &len, &err);
        if (!text) {
            fprintf(stderr, "etmoe %s: %s\n", verb, err.msg);
            etm_bpe_trainer_free(tr);
            return ETM_EXIT_FAIL;
        }
        etm_bpe_trainer_add(tr, text, len);
        total += len;
        free(text);
    }
    double t1 = etm_now();
    etm_merges m;
    etm_bpe_stats st;
    int rc = etm_bpe_trainer_train(tr, (int)vocab, &m, &st, &err);
    etm_bpe_trainer_free(tr);
    if (rc != 0) {
        fprintf(stderr, "etmoe %s: %s\n", verb, err.msg);
        return ETM_EXIT_FAIL;
    }
    double t2 = etm_now();
    size_t len;
    char *text = etm_merges_format(&m, &len);
    etm_merges_free(&m);
    /* Read it back before writing, so a file we cannot load never replaces a good one. */
    etm_tokenizer *check = etm_tokenizer_from_merges(text, len, out_path, &err);
    if (!check || etm_write_file_atomic(out_path, text, len, &err) != 0) {
        fprintf(stderr, "etmoe %s: %s\n", verb, err.msg);
        etm_tokenizer_free(check);
        free(text);
        return ETM_EXIT_FAIL;
    }
    etm_tokenizer_free(check);
    free(text);
    fprintf(stderr,
            "etmoe %s: %d files, %zu bytes, %zu pieces (%zu distinct) counted in %.2f s; %zu merges learned in "
            "%.2f s; vocabulary %zu; wrote %s\n",
            verb, argc - optind, total, st.pieces, st.unique_pieces, t1 - t0, st.merges, t2 - t1, st.merges + 257,
            out_path);
    if (st.skipped)
        fprintf(stderr, "etmoe %s: skipped %zu pairs whose bytes already were a token\n", verb, st.skipped);
    if (st.merges + 257 < (size_t)vocab)
        fprintf(stderr, "etmoe %s: warning: the text ran out of pairs; vocabulary %zu instead of %ld\n", verb,
                st.merges + 257, vocab);
    return ETM_EXIT_OK;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc < 2) return cli_usage_error("tokenizer", "which subcommand? (train)");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        tokenizer_help();
        return ETM_EXIT_OK;
    }
    if (!strcmp(argv[1], "train")) return tokenizer_train(argc - 1, argv + 1);
    return cli_usage_error("tokenizer", "unknown subcommand '%s' (there is: train)", argv[1]);
}
