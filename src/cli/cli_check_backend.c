/* cli_check_backend.c: `etmoe check-backend NAME [CONFIG]`: validates a compute backend against
 * the CPU backend, op by op, on one training step and on a short training run (the work is in
 * validate_backend.c; the procedure for a new GPU is in doc/cuda.md). */
#include <config.h>

#include "backend.h"
#include "validate_backend.h"
#include "cli.h"
#include "common.h"
#include "hparams.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *verb = "check-backend";

static void usage(const etm_cbk_options *d) {
    printf("usage: etmoe check-backend NAME [CONFIG] [key=value...] [--seed S] [--steps N] [options]\n"
           "\n"
           "Validates the compute backend NAME (e.g. cuda) against the cpu backend, in three parts:\n"
           "  (1) every operation of the backend interface on random inputs at awkward sizes: the\n"
           "      per-op table (normalised error, tolerance, whether a repeat gave identical bits);\n"
           "  (2) one training step of a small ET model and of a small TC model, from the same state\n"
           "      and on the same batch on both backends: logits, loss, every parameter gradient,\n"
           "      router logits and gates compared tensor by tensor; the routing decisions compared\n"
           "      exactly, each disagreement shown with its distance from its decision boundary (the\n"
           "      ET threshold, or the k-th/(k+1)-th largest score); then the parameters, optimizer\n"
           "      state and ET thresholds after the optimizer update and the routers' step end;\n"
           "  (3) N training steps of both models on both backends with the same data: the two loss\n"
           "      curves, which must agree step by step.\n"
           "The models are a tiny built-in configuration unless CONFIG (a config file or a preset\n"
           "name) is given; key=value overrides its settings (not router or backend: both an et and a\n"
           "tc model are run). The tokens are random, from a seeded Markov chain: no data files.\n"
           "With NAME=cpu the cpu backend is checked against itself and everything must be identical.\n"
           "\n"
           "  --seed S        random tokens and op inputs (default %llu; the initial weights follow\n"
           "                  the config's seed key)\n"
           "  --steps N       training steps of part (3) (default %d)\n"
           "  --rtol R        part (2), per element: |a-b| <= atol + rtol max(|a|,|b|) (default %g)\n"
           "  --atol A        (default %g)\n"
           "  --norm-tol X    part (2), per tensor: ||a-b|| / max(||a||,||b||) <= X (default %g)\n"
           "  --route-eps E   part (2): a routing disagreement is acceptable when the router logit\n"
           "                  is within E of its decision boundary on both backends (default %g)\n"
           "  --loss-rtol L   part (3): |loss_a - loss_b| <= L max(1, |loss_a|) (default %g)\n"
           "  --dumps DIR     keep part (2)'s files in DIR (an existing directory): the step's dump\n"
           "                  files (doc/dump-format.md) and the state after it, for `etmoe compare`\n"
           "  --help          this text\n"
           "\n"
           "Exit status: 0 when everything agrees within tolerance, 1 when something does not or the\n"
           "backend cannot run here (e.g. cuda on a machine without a GPU), 2 on bad usage.\n"
           "\n"
           "example: etmoe check-backend cuda\n",
           (unsigned long long)d->seed, d->steps, d->rtol, d->atol, d->norm_tol, d->route_eps, d->loss_rtol);
}

static int parse_u64(const char *text, uint64_t *out) {
    char *end;
    errno = 0;
    if (text[0] == '-') return -1;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int parse_tol(const char *text, double *out) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= 0) || v > 1e30) return -1;
    *out = v;
    return 0;
}

static int is_built_in(const char *name) {
    for (const char *const *n = etm_backend_names(); *n; n++)
        if (!strcmp(*n, name)) return 1;
    return 0;
}

static int key_is(const char *arg, const char *key) {
    size_t k = strlen(key);
    return !strncmp(arg, key, k) && arg[k] == '=';
}

int cmd_check_backend(int argc, char **argv) {
    etm_cbk_options o;
    etm_cbk_options_default(&o);
    const char *name = NULL, *config = NULL;
    const char *seed_s = NULL, *steps_s = NULL, *dumps = NULL;
    const char *tol_s[5] = {NULL, NULL, NULL, NULL, NULL};
    static const char *const tol_opt[5] = {"--rtol", "--atol", "--norm-tol", "--route-eps", "--loss-rtol"};
    double *tol_val[5] = {&o.rtol, &o.atol, &o.norm_tol, &o.route_eps, &o.loss_rtol};
    char **overrides = etm_calloc((size_t)argc + 1, sizeof *overrides);
    int n_over = 0, rc = ETM_EXIT_USAGE;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int missing = 0, matched = 0;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(&o);
            free(overrides);
            return ETM_EXIT_OK;
        }
        matched = cli_option_value(argc, argv, &i, "--seed", &seed_s, &missing) ||
                  cli_option_value(argc, argv, &i, "--steps", &steps_s, &missing) ||
                  cli_option_value(argc, argv, &i, "--dumps", &dumps, &missing);
        for (int t = 0; !matched && t < 5; t++) matched = cli_option_value(argc, argv, &i, tol_opt[t], &tol_s[t], &missing);
        if (matched) {
            if (missing) {
                cli_usage_error(verb, "option '%s' needs a value", a);
                goto done;
            }
        } else if (a[0] == '-' && a[1] != '\0') {
            cli_usage_error(verb, "unknown option '%s'", a);
            goto done;
        } else if (!name) {
            name = a;
        } else if (strchr(a, '=')) {
            if (key_is(a, "router") || key_is(a, "backend")) {
                cli_usage_error(verb, "'%s': check-backend runs an et and a tc model, on cpu and on NAME; "
                                "router and backend cannot be set", a);
                goto done;
            }
            overrides[n_over++] = argv[i];
        } else if (!config) {
            config = a;
        } else {
            cli_usage_error(verb, "unexpected argument '%s' (NAME, one CONFIG, then key=value overrides)", a);
            goto done;
        }
    }
    if (!name) {
        cli_usage_error(verb, "no backend NAME given (built in: see 'etmoe backends')");
        goto done;
    }
    if (!is_built_in(name) && strcmp(name, "cuda") != 0) {
        etm_error e = {{0}};
        etm_backend_create(name, &e); /* fails, and its message lists the backends built in */
        cli_usage_error(verb, "%s", e.msg);
        goto done;
    }
    long v;
    if (seed_s && parse_u64(seed_s, &o.seed) != 0) {
        cli_usage_error(verb, "--seed '%s': expected a whole number >= 0", seed_s);
        goto done;
    }
    if (steps_s) {
        if (cli_parse_long(steps_s, 1, 1000000, &v) != 0) {
            cli_usage_error(verb, "--steps '%s': expected a whole number of steps >= 1", steps_s);
            goto done;
        }
        o.steps = (int)v;
    }
    for (int t = 0; t < 5; t++)
        if (tol_s[t] && parse_tol(tol_s[t], tol_val[t]) != 0) {
            cli_usage_error(verb, "%s '%s': expected a number >= 0", tol_opt[t], tol_s[t]);
            goto done;
        }
    struct stat st;
    if (dumps && (stat(dumps, &st) != 0 || !S_ISDIR(st.st_mode))) {
        cli_usage_error(verb, "--dumps '%s': not an existing directory", dumps);
        goto done;
    }
    o.dump_dir = dumps;

    etm_error err = {{0}};
    etm_hparams hp;
    if (config) {
        if (etm_hparams_configure(&hp, config, n_over, overrides, &err) != 0) {
            cli_usage_error(verb, "%s", err.msg);
            goto done;
        }
    } else {
        etm_cbk_tiny_hparams(&hp, ETM_ROUTER_ET);
        for (int i = 0; i < n_over; i++)
            if (etm_hparams_set_arg(&hp, overrides[i], &err) != 0) {
                cli_usage_error(verb, "%s", err.msg);
                goto done;
            }
        if (etm_hparams_validate(&hp, &err) != 0) {
            cli_usage_error(verb, "%s", err.msg);
            goto done;
        }
    }

    rc = ETM_EXIT_FAIL;
    etm_backend *ref = etm_backend_create("cpu", &err);
    if (!ref) {
        fprintf(stderr, "etmoe %s: the reference: %s\n", verb, err.msg);
        goto done;
    }
    etm_backend *test = etm_backend_create(name, &err);
    if (!test) {
        fprintf(stderr, "etmoe %s: cannot validate '%s' on this machine: %s\n", verb, name, err.msg);
        etm_backend_free(ref);
        goto done;
    }
    int verdict = etm_cbk_run(ref, test, &hp, &o, stdout, &err);
    fflush(stdout);
    if (verdict < 0) fprintf(stderr, "etmoe %s: %s\n", verb, err.msg);
    rc = verdict == 1 ? ETM_EXIT_OK : ETM_EXIT_FAIL;
    etm_backend_free(test);
    etm_backend_free(ref);
done:
    free(overrides);
    return rc;
}
