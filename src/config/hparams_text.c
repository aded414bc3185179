/* hparams_text.c: the config text (the syntax is in doc/config.md): reading it from a file, a
 * preset, a string and key=value arguments into etm_hparams, writing it back, and --help. The
 * keys, their defaults and validation are the table in hparams.c (hparams_keys.h). */
#include <config.h>

#include "hparams.h"
#include "hparams_keys.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    return s;
}

/* Cuts a '#' comment (at the line start or after whitespace) from an unquoted value. */
static void cut_comment(char *s) {
    for (char *p = s; *p; p++)
        if (*p == '#' && (p == s || isspace((unsigned char)p[-1]))) {
            *p = '\0';
            return;
        }
}

/* Turns a value into its text in place: "quoted" (with \" and \\) or bare up to a comment. */
static int parse_value(char *v, const char *where, const char *key, etm_error *err) {
    if (*v != '"') {
        cut_comment(v);
        char *t = trim(v);
        memmove(v, t, strlen(t) + 1);
        return 0;
    }
    char *out = v;
    const char *p = v + 1;
    for (;; p++) {
        if (*p == '\0') return etm_fail(err, "%s%s: the closing quote is missing", where, key);
        if (*p == '"') break;
        if (*p == '\\') {
            if (p[1] != '"' && p[1] != '\\')
                return etm_fail(err, "%s%s: unknown escape '\\%c' (only \\\" and \\\\)", where, key,
                                p[1] ? p[1] : ' ');
            p++;
        }
        *out++ = *p;
    }
    const char *rest = p + 1;
    while (isspace((unsigned char)*rest)) rest++;
    if (*rest && *rest != '#')
        return etm_fail(err, "%s%s: unexpected text after the closing quote", where, key);
    *out = '\0';
    return 0;
}

/* Parses config text into hp. name is used in messages; o (may be NULL) records each key's line. */
static int parse_text(etm_hparams *hp, const char *text, const char *name, origins *o, etm_error *err) {
    char *copy = etm_strdup(text);
    int line_of[ETM_HPARAMS_MAX_KEYS] = {0};
    int line_no = 0, rc = 0;
    char *line = copy;
    while (line && rc == 0) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        line_no++;
        char where[1200];
        snprintf(where, sizeof where, "%s:%d: ", name, line_no);
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[--len] = '\0';
        char *s = trim(line);
        if (*s == '\0' || *s == '#') {
            line = next;
            continue;
        }
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (!close) {
                rc = etm_fail(err, "%sthe section header has no closing ']'", where);
                break;
            }
            *close = '\0';
            char *rest = close + 1;
            cut_comment(rest);
            if (*trim(rest)) {
                rc = etm_fail(err, "%sunexpected text after the section header", where);
                break;
            }
            char *sec = trim(s + 1);
            if (!etm_hparams_is_section(sec)) rc = etm_fail(err, "%sunknown section [%s] (model, moe, optim or run)", where, sec);
            line = next;
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = etm_fail(err, "%sexpected 'key = value'", where);
            break;
        }
        *eq = '\0';
        char *key = trim(s);
        char *value = trim(eq + 1);
        int k = etm_hparams_find_key(key);
        if (*key == '\0') rc = etm_fail(err, "%sthe key before '=' is missing", where);
        else if (k < 0) rc = etm_hparams_unknown_key(err, where, key);
        else if (line_of[k]) rc = etm_fail(err, "%s%s is already set on line %d", where, key, line_of[k]);
        else if ((rc = parse_value(value, where, key, err)) == 0) {
            if (*value == '\0' && etm_hparams_key_info(k)->type != KEY_STR)
                rc = etm_fail(err, "%s%s: the value is missing", where, key);
            else rc = etm_hparams_set_value(hp, k, value, where, err);
        }
        if (rc == 0) {
            line_of[k] = line_no;
            if (o) snprintf(o->where[k], sizeof o->where[k], "%s:%d", name, line_no);
        }
        line = next;
    }
    free(copy);
    return rc;
}

/* A preset name (letters, digits, '_', '-', no '/' or '.') means <data dir>/configs/<name>.conf. */
static void resolve_config(const char *path_or_preset, char *buf, size_t len) {
    int bare = *path_or_preset != '\0';
    for (const char *p = path_or_preset; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-') bare = 0;
    if (bare) {
        char dir[1024];
        snprintf(buf, len, "%s/configs/%s.conf", etm_data_dir(dir, sizeof dir), path_or_preset);
    } else {
        snprintf(buf, len, "%s", path_or_preset);
    }
}

static int load_file(etm_hparams *hp, const char *path_or_preset, origins *o, etm_error *err) {
    char path[2048];
    resolve_config(path_or_preset, path, sizeof path);
    size_t len = 0;
    char *text = etm_read_file_max(path, "config", ETM_MAX_CONFIG_BYTES, &len, err);
    if (!text) {
        if (strcmp(path, path_or_preset))
            etm_fail(err, "no preset '%s' (%s: cannot read it); presets live in data/configs/",
                     path_or_preset, path);
        return -1;
    }
    if (strlen(text) != len) { /* a NUL byte would silently end the text there */
        size_t at = strlen(text);
        int line = 1;
        for (size_t i = 0; i < at; i++) line += text[i] == '\n';
        free(text);
        return etm_fail(err, "%s:%d: a NUL byte (at byte %zu): not a text file", path, line, at);
    }
    int rc = parse_text(hp, text, path, o, err);
    free(text);
    return rc;
}

int etm_hparams_configure(etm_hparams *hp, const char *path_or_preset, int n_args,
                          char *const *args, etm_error *err) {
    origins *o = etm_calloc(1, sizeof *o);
    etm_hparams tmp;
    etm_hparams_defaults(&tmp);
    int rc = path_or_preset ? load_file(&tmp, path_or_preset, o, err) : 0;
    for (int i = 0; rc == 0 && i < n_args; i++) {
        const char *eq = strchr(args[i], '=');
        if (!eq || eq == args[i]) {
            rc = etm_fail(err, "argument '%s': expected key=value", args[i]);
            break;
        }
        char key[128];
        size_t klen = (size_t)(eq - args[i]);
        if (klen >= sizeof key) {
            rc = etm_fail(err, "argument '%s': the key is too long", args[i]);
            break;
        }
        memcpy(key, args[i], klen);
        key[klen] = '\0';
        char where[300];
        snprintf(where, sizeof where, "argument '%.200s': ", args[i]);
        int k = etm_hparams_find_key(key);
        if (k < 0) rc = etm_hparams_unknown_key(err, where, key);
        else rc = etm_hparams_set_value(&tmp, k, eq + 1, where, err);
        if (rc == 0 && k >= 0) snprintf(o->where[k], sizeof o->where[k], "argument '%.150s'", args[i]);
    }
    if (rc == 0) rc = etm_hparams_validate_from(&tmp, o, err);
    if (rc == 0) *hp = tmp;
    free(o);
    return rc;
}

int etm_hparams_load(etm_hparams *hp, const char *path_or_preset, etm_error *err) {
    return etm_hparams_configure(hp, path_or_preset, 0, NULL, err);
}

int etm_hparams_set_arg(etm_hparams *hp, const char *key_eq_value, etm_error *err) {
    const char *eq = strchr(key_eq_value, '=');
    if (!eq || eq == key_eq_value)
        return etm_fail(err, "argument '%s': expected key=value", key_eq_value);
    char key[128];
    size_t klen = (size_t)(eq - key_eq_value);
    if (klen >= sizeof key) return etm_fail(err, "argument '%s': the key is too long", key_eq_value);
    memcpy(key, key_eq_value, klen);
    key[klen] = '\0';
    return etm_hparams_set(hp, key, eq + 1, err);
}

int etm_hparams_from_string(etm_hparams *hp, const char *text, const char *name, etm_error *err) {
    origins *o = etm_calloc(1, sizeof *o);
    etm_hparams tmp;
    etm_hparams_defaults(&tmp);
    int rc = parse_text(&tmp, text, name ? name : "(config text)", o, err);
    if (rc == 0) rc = etm_hparams_validate_from(&tmp, o, err);
    if (rc == 0) *hp = tmp;
    free(o);
    return rc;
}

char *etm_hparams_to_string(const etm_hparams *hp) {
    size_t cap = 8192, n = 0;
    char *out = etm_malloc(cap);
    n += (size_t)snprintf(out, cap, "# etmoe configuration: every key (doc/config.md)\n");
    const char *section = "";
    for (int k = 0; k < etm_hparams_n_keys(); k++) {
        const key_info *ki = etm_hparams_key_info(k);
        char value[2200];
        etm_hparams_format_value(hp, k, 1, value, sizeof value);
        size_t need = strlen(ki->key) + strlen(value) + strlen(ki->section) + 16;
        while (n + need >= cap) out = etm_realloc(out, cap *= 2);
        if (strcmp(section, ki->section)) {
            section = ki->section;
            n += (size_t)snprintf(out + n, cap - n, "\n[%s]\n", section);
        }
        n += (size_t)snprintf(out + n, cap - n, "%s = %s\n", ki->key, value);
    }
    return out;
}

void etm_hparams_print_help(FILE *f) {
    etm_hparams d;
    etm_hparams_defaults(&d);
    const char *section = "";
    for (int k = 0; k < etm_hparams_n_keys(); k++) {
        const key_info *ki = etm_hparams_key_info(k);
        if (strcmp(section, ki->section)) {
            section = ki->section;
            fprintf(f, "\n[%s]\n", section);
        }
        char value[2200], type[256];
        etm_hparams_format_value(&d, k, 1, value, sizeof value);
        switch (ki->type) {
        case KEY_INT: snprintf(type, sizeof type, "integer >= %d", ki->min); break;
        case KEY_U64: snprintf(type, sizeof type, "integer >= 0"); break;
        case KEY_FLOAT:
            snprintf(type, sizeof type, "number%s%s", ki->names ? " or " : "", ki->names ? ki->names[0] : "");
            break;
        case KEY_STR: snprintf(type, sizeof type, "text"); break;
        case KEY_ENUM: etm_hparams_enum_list(ki->names, type, sizeof type); break;
        }
        fprintf(f, "  %-20s %s [%s; default %s]\n", ki->key, ki->doc, type, value);
    }
}
