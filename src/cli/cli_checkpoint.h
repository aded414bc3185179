/* cli_checkpoint.h: the skeleton every verb that reads a checkpoint shares (eval, dump, inspect,
 * generate, routing-profile), and the command line's error policy.
 *
 * Exit status: 2 (ETM_EXIT_USAGE) for the user's mistakes, 1 (ETM_EXIT_FAIL) for failures of the
 * run. The user's mistakes, one wording each ("etmoe VERB: " first):
 *   usage             "unknown option '--x'"  + "(run 'etmoe VERB --help' for usage)"
 *   missing           "PATH: no such file"
 *   unreadable        "PATH: cannot open the checkpoint: Permission denied"
 *   a directory       "PATH: is a directory, not a checkpoint file"
 *   not a regular file "PATH: not a regular file (a FIFO, device or socket), so not a checkpoint file"
 *   not safetensors   "PATH: not a safetensors file (why)"
 *   another model's   "PATH: not an etmoe checkpoint (...)"
 *   unknown backend   "unknown backend 'x' (built in: cpu, ...)"
 *   too large         "PATH: the model needs X GiB; ..." (cli_ckpt_check_memory)
 * A refused run creates nothing: every check above runs before the verb writes a file or a
 * directory. Everything after them (the backend starting, the model loading, the data, the
 * verb's own work) is a failure of the run. */
#ifndef ETM_CLI_CHECKPOINT_H
#define ETM_CLI_CHECKPOINT_H

#include "backend.h"
#include "common.h"
#include "hparams.h"
#include "model.h"

typedef struct {
    const char *verb; /* the verb's name, for messages: "eval" */
    const char *path; /* the checkpoint as given */
    etm_hparams hp;   /* its configuration (cli_ckpt_open) */
    etm_backend *be;  /* NULL until cli_ckpt_load */
    etm_model *m;     /* NULL until cli_ckpt_load; the checkpoint's parameters and router state */
    etm_error err;    /* the last failure's message */
} cli_ckpt;

/* Prints "etmoe VERB: message" (no usage hint: the input is wrong, not the command line) and
 * returns ETM_EXIT_USAGE. */
int cli_input_error(const char *verb, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ETM_EXIT_OK when name is a backend built into this program, else the input error above. */
int cli_check_backend_name(const char *verb, const char *name);

/* Checks path (a regular, readable safetensors file that is an etmoe checkpoint) and reads its
 * configuration into c->hp. ETM_EXIT_OK, or the exit code after printing the message. */
int cli_ckpt_open(cli_ckpt *c, const char *verb, const char *path);

/* Refuses (ETM_EXIT_USAGE, message printed) a model that needs more memory than this machine has,
 * for micro-batches of max_batch sequences; `training` counts gradients and optimizer state. */
int cli_ckpt_check_memory(const char *verb, const char *what, const etm_hparams *hp, int max_batch, int training);

/* Checks the backend's name (backend, or the configuration's when NULL) and the memory, starts
 * the backend and loads the model for micro-batches of up to max_batch sequences.
 * ETM_EXIT_OK, or the exit code after printing the message. */
int cli_ckpt_load(cli_ckpt *c, const char *backend, int max_batch);

/* Prints "etmoe VERB: <c->err>" and returns ETM_EXIT_FAIL: a failure of the run. */
int cli_ckpt_fail(cli_ckpt *c);

/* Frees the model and the backend (safe on a zeroed or half-opened c). */
void cli_ckpt_close(cli_ckpt *c);

#endif
