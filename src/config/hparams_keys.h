/* hparams_keys.h: what the key table (hparams.c) offers the config-text reader and writer
 * (hparams_text.c): the description of one key, where each key got its value, and the table's
 * lookups, value parsing and formatting, and validation. Internal to src/config/. */
#ifndef ETM_HPARAMS_KEYS_H
#define ETM_HPARAMS_KEYS_H

#include "hparams.h"

#include <stddef.h>

typedef enum { KEY_INT, KEY_U64, KEY_FLOAT, KEY_STR, KEY_ENUM } key_type;

typedef struct {
    const char *key;          /* the field's name */
    const char *section;      /* the [section] the printer puts it in */
    key_type type;
    size_t offset;            /* offsetof(etm_hparams, field) */
    size_t size;              /* KEY_STR: capacity including the NUL */
    int min;                  /* KEY_INT: smallest allowed value */
    const char *const *names; /* KEY_ENUM: value names in enum order, NULL-terminated; KEY_FLOAT:
                                 NULL, or {word, NULL}: the word stands for ETM_INHERIT (-1) */
    const char *doc;          /* one line for --help */
} key_info;

/* The most keys the table may hold (hparams.c checks it at compile time): origins is sized by it. */
#define ETM_HPARAMS_MAX_KEYS 256

/* Where each key got its value ("demo.conf:7", "argument 'd_model=64'"); empty = the default. */
typedef struct {
    char where[ETM_HPARAMS_MAX_KEYS][200];
} origins;

/* Key k's row, for k < etm_hparams_n_keys(). */
const key_info *etm_hparams_key_info(int k);
/* 1 when name is a [section] of the config text. */
int etm_hparams_is_section(const char *name);
/* The row of key, or -1. */
int etm_hparams_find_key(const char *key);
/* Fails with "unknown key" and the nearest key name; where prefixes the message. */
int etm_hparams_unknown_key(etm_error *err, const char *where, const char *key);
/* Parses value into the field of key k (no cross-key checks); where prefixes messages. */
int etm_hparams_set_value(etm_hparams *hp, int k, const char *value, const char *where, etm_error *err);
/* Key k's value as text; quote puts strings in double quotes with \" and \\ escaped. */
void etm_hparams_format_value(const etm_hparams *hp, int k, int quote, char *buf, size_t len);
/* "a, b, c" from a NULL-terminated list of enum names. */
void etm_hparams_enum_list(const char *const *names, char *buf, size_t len);
/* etm_hparams_validate, with messages saying where (o, may be NULL) the keys involved were set. */
int etm_hparams_validate_from(const etm_hparams *hp, const origins *o, etm_error *err);

#endif
