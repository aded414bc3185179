/* cli_checkpoint.c: the open-a-checkpoint skeleton of the checkpoint verbs and the command line's
 * error policy (cli_checkpoint.h). */
#include <config.h>

#include "cli_checkpoint.h"

#include "checkpoint.h"
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int cli_input_error(const char *verb, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "etmoe %s: ", verb);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return ETM_EXIT_USAGE;
}

int cli_check_backend_name(const char *verb, const char *name) {
    const char *const *names = etm_backend_names();
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], name)) return ETM_EXIT_OK;
    /* etm_backend_create words the message (and knows about a CUDA backend left out of the build) */
    etm_error err = {{0}};
    etm_backend *be = etm_backend_create(name, &err);
    if (be) { /* cannot happen: every name it accepts is in the list */
        etm_backend_free(be);
        return ETM_EXIT_OK;
    }
    return cli_input_error(verb, "%s", err.msg);
}

int cli_ckpt_open(cli_ckpt *c, const char *verb, const char *path) {
    memset(c, 0, sizeof *c);
    c->verb = verb;
    c->path = path;
    /* The file itself first, with the checkpoint's wording (a FIFO must not block us). */
    int fd = etm_open_regular(path, "checkpoint", NULL, &c->err);
    if (fd < 0) return cli_input_error(verb, "%s", c->err.msg);
    close(fd);
    /* Not safetensors, another program's safetensors file, a configuration this etmoe rejects:
     * all the user's input, named by etm_checkpoint_read_config. */
    if (etm_checkpoint_read_config(path, &c->hp, &c->err) != 0) return cli_input_error(verb, "%s", c->err.msg);
    return ETM_EXIT_OK;
}

int cli_ckpt_check_memory(const char *verb, const char *what, const etm_hparams *hp, int max_batch, int training) {
    etm_memory_estimate est;
    etm_model_memory_estimate(hp, max_batch, training, &est);
    etm_error err = {{0}};
    if (etm_memory_check(&est, &err) != 0) return cli_input_error(verb, "%s: the model %s", what, err.msg);
    return ETM_EXIT_OK;
}

int cli_ckpt_load(cli_ckpt *c, const char *backend, int max_batch) {
    const char *name = backend ? backend : c->hp.backend;
    int rc = cli_check_backend_name(c->verb, name);
    if (rc != ETM_EXIT_OK) return rc;
    rc = cli_ckpt_check_memory(c->verb, c->path, &c->hp, max_batch, 0);
    if (rc != ETM_EXIT_OK) return rc;
    c->be = etm_backend_create(name, &c->err);
    if (!c->be) return cli_ckpt_fail(c);
    c->m = etm_checkpoint_load_model(c->path, c->be, max_batch, &c->err);
    if (!c->m) return cli_ckpt_fail(c);
    return ETM_EXIT_OK;
}

int cli_ckpt_fail(cli_ckpt *c) {
    fprintf(stderr, "etmoe %s: %s\n", c->verb, c->err.msg);
    return ETM_EXIT_FAIL;
}

void cli_ckpt_close(cli_ckpt *c) {
    etm_model_free(c->m);
    if (c->be) etm_backend_free(c->be);
    c->m = NULL;
    c->be = NULL;
}
