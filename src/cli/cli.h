/* cli.h: the verbs of the etmoe program. Each verb is a function taking its own argv (argv[0] is
 * the verb's name) and returning the process exit code: 0 success, 1 failure while running,
 * 2 bad usage (unknown option, missing argument or file). */
#ifndef ETM_CLI_H
#define ETM_CLI_H

#include <stddef.h>

typedef struct {
    const char *name;                 /* as typed: "tokenize", "train", ... */
    int (*run)(int argc, char **argv); /* argv[0] is the verb name */
    const char *summary;              /* one line for `etmoe --help` */
} etm_verb;

#define ETM_EXIT_OK 0
#define ETM_EXIT_FAIL 1
#define ETM_EXIT_USAGE 2

/* Prints "etmoe VERB: message" and a hint to run --help to stderr; returns ETM_EXIT_USAGE. */
int cli_usage_error(const char *verb, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Matches argv[*i] against option name, as "--name VALUE" (advancing *i) or "--name=VALUE".
 * Returns 1 on a match with *value set, or with *missing set when no value follows; else 0. */
int cli_option_value(int argc, char **argv, int *i, const char *name, const char **value, int *missing);

/* One option of a verb, a row of the verb's option table. */
typedef struct {
    const char *name;   /* as typed: "--data"; "--data VALUE" and "--data=VALUE" both match */
    const char **value; /* where the value goes; NULL for a flag */
    int *flag;          /* set to 1 when a flag is given; NULL for an option with a value */
} cli_option;

/* What cli_parse_options returns besides ETM_EXIT_USAGE: go on, or --help was printed. */
#define CLI_PARSED 0
#define CLI_HELP_SHOWN (-1)

/* Reads argv[1..] against a verb's option table: options (with a value or flags), --help / -h
 * (calls usage, returns CLI_HELP_SHOWN) and at most one positional argument, stored in
 * *positional and named `what` in errors ("one checkpoint only ('a' and 'b')"). Unknown options,
 * a missing value or a second positional argument print the error (cli_usage_error) and return
 * ETM_EXIT_USAGE. A lone "-" is a positional argument. Returns CLI_PARSED otherwise. */
int cli_parse_options(const char *verb, int argc, char **argv, const cli_option *opts, size_t n_opts,
                      const char *what, const char **positional, void (*usage)(void));

/* Parses a whole decimal number in [lo, hi]; 0, or -1 for anything else (junk, overflow, range). */
int cli_parse_long(const char *text, long lo, long hi, long *out);

/* The verbs. */
int cmd_tokenize(int argc, char **argv);
int cmd_tokenizer(int argc, char **argv);
int cmd_prepare(int argc, char **argv);
int cmd_backends(int argc, char **argv);
int cmd_dump(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_check_backend(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_routing_profile(int argc, char **argv);

#endif
