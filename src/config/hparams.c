/* hparams.c: the defaults of every setting and their validation: one table of keys (name, section,
 * type, field offset, minimum, enum names, meaning) drives the parser and printer of the config
 * text (hparams_text.c, through hparams_keys.h), --help, the comparison and the documentation
 * check. The syntax is in doc/config.md. */
#include <config.h>

#include "hparams.h"
#include "hparams_keys.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Enum fields are read and written through int pointers; make sure that is their size. */
typedef char enum_is_int_sized[(sizeof(etm_router_kind) == sizeof(int) &&
                                sizeof(etm_score_kind) == sizeof(int) &&
                                sizeof(etm_gate_fn) == sizeof(int) &&
                                sizeof(etm_balance_kind) == sizeof(int) &&
                                sizeof(etm_clamp_mode) == sizeof(int) &&
                                sizeof(etm_cutoff_scope) == sizeof(int) &&
                                sizeof(etm_ec_pool_scope) == sizeof(int) &&
                                sizeof(etm_matrix_optimizer) == sizeof(int) &&
                                sizeof(etm_muon_layout) == sizeof(int) &&
                                sizeof(etm_ns_gram) == sizeof(int)) ? 1 : -1];


static const char *const router_names[] = {"dense", "tc", "ec", "et", NULL};
typedef char router_names_cover_kinds[ETM_ARRAY_LEN(router_names) == ETM_ROUTER_N_KINDS + 1 ? 1 : -1];

const char *etm_router_kind_name(etm_router_kind kind) {
    return (int)kind >= 0 && kind < ETM_ROUTER_N_KINDS ? router_names[kind] : NULL;
}
static const char *const score_names[] = {"sigmoid", "softmax", NULL};
static const char *const gate_names[] = {"sigmoid", "relu", "softmax_e", "softmax_e_shared_out",
                                         "softmax_k", NULL};
static const char *const balance_names[] = {"none", "aux", "switch", "lossfree", "aux_error", NULL};
static const char *const clamp_names[] = {"positive", "always", NULL};
static const char *const cutoff_scope_names[] = {"pool", "microbatch", "step", NULL};
static const char *const ec_pool_scope_names[] = {"microbatch", "step", NULL};
static const char *const optimizer_names[] = {"muon", "adamw", NULL};
static const char *const muon_layout_names[] = {"per_expert", "stacked", NULL};
static const char *const ns_gram_names[] = {"full", "symmetric", NULL};

static const char *const inherit_word[] = {"inherit", NULL};

static const char *const sections[] = {"model", "moe", "optim", "run", NULL};

#define OFF(f) offsetof(etm_hparams, f)
#define INT(f, sec, lo, doc) {#f, sec, KEY_INT, OFF(f), sizeof(int), lo, NULL, doc}
#define FLT(f, sec, doc) {#f, sec, KEY_FLOAT, OFF(f), sizeof(float), 0, NULL, doc}
/* a number, or the word names[0] for ETM_INHERIT */
#define FLTW(f, sec, word, doc) {#f, sec, KEY_FLOAT, OFF(f), sizeof(float), 0, word, doc}
#define STR(f, sec, doc) {#f, sec, KEY_STR, OFF(f), sizeof(((etm_hparams *)0)->f), 0, NULL, doc}
#define ENM(f, sec, names, doc) {#f, sec, KEY_ENUM, OFF(f), sizeof(int), 0, names, doc}

static const key_info keys[] = {
    INT(vocab_size, "model", 1, "vocabulary size V (at least the tokenizer's)"),
    INT(seq_len, "model", 1, "tokens per training sequence T"),
    INT(n_layer, "model", 1, "transformer blocks L"),
    INT(d_model, "model", 1, "residual width D"),
    INT(n_head, "model", 1, "query heads H; head_dim = D / H, even"),
    INT(n_kv_head, "model", 1, "key/value heads (grouped-query attention); divides n_head"),
    INT(ffn_hidden, "model", 1, "hidden width of the dense MLP layers"),
    FLT(rope_base, "model", "rotary embedding base"),
    FLT(logit_cap, "model", "logits soft cap: cap * tanh(logits / cap)"),
    FLT(norm_eps, "model", "RMSNorm epsilon"),

    ENM(router, "moe", router_names, "MLP kind: dense, tc (token choice), ec (expert choice), et (expert threshold)"),
    INT(dense_layers, "moe", 0, "the first layers keep a dense MLP"),
    INT(n_routed, "moe", 1, "routed experts per MoE layer E"),
    INT(n_shared, "moe", 0, "shared experts per MoE layer (every token, gate 1)"),
    INT(expert_hidden, "moe", 1, "hidden width of each expert"),
    INT(top_k, "moe", 1, "routed experts per token k (tc: exactly; ec/et: on average)"),
    ENM(tc_score, "moe", score_names, "tc scores: sigmoid or softmax over experts"),
    ENM(router_activation, "moe", gate_names,
        "gate function: sigmoid, relu, softmax_e, softmax_e_shared_out, softmax_k (ec, et)"),
    ENM(tc_balance, "moe", balance_names, "tc balancing: none, aux, switch, lossfree"),
    FLT(aux_alpha, "moe", "tc aux/switch balance loss coefficient"),
    FLT(lossfree_rate, "moe", "tc loss-free bias step u"),
    FLT(z_loss, "moe", "router z-loss coefficient (0 = off)"),
    FLT(capacity_factor, "moe", "tc: tokens per expert capped at cf * N k / E (0 = off)"),
    INT(pool_seqs, "moe", 0, "ec/et routing pool in sequences (0 = whole micro-batch)"),
    FLT(et_beta, "moe", "et: EMA decay of the thresholds, in [0, 1)"),
    INT(et_warmup_steps, "moe", 0, "et: route with expert choice for the first steps"),
    INT(ema_start_steps, "moe", 0, "ec, et: the cut-off EMA starts after this many optimizer steps"),
    FLT(et_capacity, "moe", "et: capacity clamp C, loads kept in [(1-C), (1+C)] k_target (0 = off)"),
    ENM(et_capacity_mode, "moe", clamp_names, "et: positive (clamp when et_capacity > 0) or always (0 = exactly k_target)"),
    ENM(et_cutoff_scope, "moe", cutoff_scope_names, "ec, et: cut-off over each pool (mean), the micro-batch, or the optimizer step"),
    ENM(ec_pool_scope, "moe", ec_pool_scope_names, "ec training, et warm-up: each expert picks its tokens within the micro-batch's pools, or over the whole optimizer step"),

    {"seed", "optim", KEY_U64, OFF(seed), sizeof(uint64_t), 0, NULL, "seed of initialisation and data order"},
    INT(batch_size, "optim", 1, "sequences per micro-batch"),
    INT(grad_accum, "optim", 1, "micro-batches per optimizer step"),
    INT(max_steps, "optim", 1, "optimizer steps"),
    ENM(matrix_optimizer, "optim", optimizer_names, "hidden matrices: muon or adamw"),
    FLT(lr_matrix, "optim", "learning rate of hidden matrices"),
    FLT(lr_embed, "optim", "learning rate of the token embedding (AdamW)"),
    FLT(lr_head, "optim", "learning rate of the LM head (AdamW)"),
    FLT(lr_router, "optim", "learning rate of router weights (AdamW)"),
    FLT(adam_beta1, "optim", "AdamW beta1, in [0, 1)"),
    FLT(adam_beta2, "optim", "AdamW beta2, in [0, 1)"),
    FLT(adam_eps, "optim", "AdamW epsilon"),
    FLT(weight_decay, "optim", "decoupled weight decay (AdamW and Muon)"),
    FLTW(matrix_weight_decay, "optim", inherit_word,
         "decoupled weight decay of the hidden matrices only (inherit = weight_decay)"),
    FLT(lr_expert_scale, "optim", "multiplies lr_matrix for the routed experts' up and down projections"),
    FLT(muon_momentum_start, "optim", "Muon momentum at step 0"),
    FLT(muon_momentum_end, "optim", "Muon momentum after muon_warmup_steps"),
    INT(muon_warmup_steps, "optim", 0, "steps of the linear Muon momentum warm-up"),
    INT(ns_steps, "optim", 1, "Newton-Schulz iterations of Muon"),
    ENM(muon_expert_layout, "optim", muon_layout_names, "Muon over expert tensors: per_expert or stacked"),
    ENM(muon_ns_gram, "optim", ns_gram_names,
        "Newton-Schulz's symmetric products: full GEMMs or symmetric (fewer FLOPs, other bits)"),
    INT(warmup_steps, "optim", 0, "steps of linear learning-rate warm-up"),
    FLT(decay_fraction, "optim", "fraction of steps, at the end, of linear decay"),
    FLT(final_lr_frac, "optim", "learning-rate multiplier the decay ends at"),
    FLT(grad_clip, "optim", "global gradient-norm clip (0 = off)"),

    STR(train_data, "run", "training shards (glob)"),
    STR(val_data, "run", "validation shards (glob)"),
    STR(tokenizer, "run", "tokenizer: merges file or shipped name"),
    STR(out_dir, "run", "run directory"),
    STR(backend, "run", "compute backend: cpu or cuda"),
    INT(eval_every, "run", 0, "steps between validation losses (0 = only at the end)"),
    INT(eval_batches, "run", 1, "micro-batches per validation"),
    INT(ckpt_every, "run", 0, "steps between checkpoints (0 = only at the end)"),
    INT(log_every, "run", 1, "steps between progress lines"),
    INT(thresholds_every, "run", 0, "steps between threshold records (0 = never)"),
};
#define N_KEYS ((int)ETM_ARRAY_LEN(keys))

void etm_hparams_defaults(etm_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    hp->vocab_size = 4096;
    hp->seq_len = 256;
    hp->n_layer = 4;
    hp->d_model = 96;
    hp->n_head = 3;
    hp->n_kv_head = 1;
    hp->ffn_hidden = 384;
    hp->rope_base = 10000.0f;
    hp->logit_cap = 15.0f;
    hp->norm_eps = 1e-6f;

    hp->router = ETM_ROUTER_ET;
    hp->dense_layers = 1;
    hp->n_routed = 8;
    hp->n_shared = 1;
    hp->expert_hidden = 192;
    hp->top_k = 1;
    hp->tc_score = ETM_SCORE_SIGMOID;
    hp->tc_balance = ETM_BALANCE_AUX;
    hp->router_activation = ETM_GATE_SIGMOID;
    hp->aux_alpha = 0.001f;
    hp->lossfree_rate = 0.001f;
    hp->z_loss = 0.0f;
    hp->capacity_factor = 0.0f;
    hp->pool_seqs = 0;
    hp->et_beta = 0.8f;
    hp->et_warmup_steps = 40;
    hp->ema_start_steps = 0;
    hp->et_capacity = 0.0f;
    hp->et_capacity_mode = ETM_CLAMP_POSITIVE;
    hp->et_cutoff_scope = ETM_CUTOFF_POOL;
    hp->ec_pool_scope = ETM_EC_POOL_MICROBATCH;

    hp->seed = 1337;
    hp->batch_size = 16;
    hp->grad_accum = 1;
    hp->max_steps = 450;
    hp->matrix_optimizer = ETM_OPT_MUON;
    hp->lr_matrix = 0.02f;
    hp->lr_embed = 0.57f;
    hp->lr_head = 0.011f;
    hp->lr_router = 0.001f;
    hp->adam_beta1 = 0.8f;
    hp->adam_beta2 = 0.95f;
    hp->adam_eps = 1e-10f;
    hp->weight_decay = 0.0f;
    hp->matrix_weight_decay = ETM_INHERIT;
    hp->lr_expert_scale = 1.0f;
    hp->muon_momentum_start = 0.85f;
    hp->muon_momentum_end = 0.95f;
    hp->muon_warmup_steps = 100;
    hp->ns_steps = 5;
    hp->muon_expert_layout = ETM_MUON_PER_EXPERT;
    hp->muon_ns_gram = ETM_NS_GRAM_FULL;
    hp->warmup_steps = 10;
    hp->decay_fraction = 0.4f;
    hp->final_lr_frac = 0.0f;
    hp->grad_clip = 1.0f;

    snprintf(hp->train_data, sizeof hp->train_data, "%s", "runs/data/austen/train_*.bin");
    snprintf(hp->val_data, sizeof hp->val_data, "%s", "runs/data/austen/val_*.bin");
    snprintf(hp->tokenizer, sizeof hp->tokenizer, "%s", "austen");
    snprintf(hp->out_dir, sizeof hp->out_dir, "%s", "runs/demo");
    snprintf(hp->backend, sizeof hp->backend, "%s", "cpu");
    hp->eval_every = 75;
    hp->eval_batches = 8;
    hp->ckpt_every = 0;
    hp->log_every = 10;
    hp->thresholds_every = 10;
}

/* ---- the table ------------------------------------------------------------------------------- */

int etm_hparams_n_keys(void) { return N_KEYS; }

const char *etm_hparams_key(int i) { return i >= 0 && i < N_KEYS ? keys[i].key : NULL; }

static int find_key(const char *key) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(keys[i].key, key)) return i;
    return -1;
}

static void *field(etm_hparams *hp, int k) { return (char *)hp + keys[k].offset; }
static const void *cfield(const etm_hparams *hp, int k) { return (const char *)hp + keys[k].offset; }
static int int_of(const etm_hparams *hp, int k) { return *(const int *)cfield(hp, k); }
static float float_of(const etm_hparams *hp, int k) { return *(const float *)cfield(hp, k); }

/* Edit distance, for "did you mean" on unknown keys. */
static int edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    int row[65];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static int unknown_key(etm_error *err, const char *where, const char *key) {
    int best = -1, best_d = 4;
    for (int i = 0; i < N_KEYS; i++) {
        int d = edit_distance(key, keys[i].key);
        if (d < best_d) best_d = d, best = i;
    }
    if (best >= 0)
        return etm_fail(err, "%sunknown key '%s' (did you mean '%s'?)", where, key, keys[best].key);
    return etm_fail(err, "%sunknown key '%s' (etmoe train --help-keys lists the keys)", where, key);
}

/* ---- values ---------------------------------------------------------------------------------- */

static void enum_list(const char *const *names, char *buf, size_t len) {
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; names[i] && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? ", " : "", names[i]);
}

/* Parses value into the field of key k. where prefixes messages ("file:line: " or ""). */
static int set_value(etm_hparams *hp, int k, const char *value, const char *where, etm_error *err) {
    const key_info *ki = &keys[k];
    char *end = NULL;
    switch (ki->type) {
    case KEY_INT: {
        errno = 0;
        long v = strtol(value, &end, 10);
        if (end == value || *end != '\0' || isspace((unsigned char)value[0]))
            return etm_fail(err, "%s%s: '%s' is not a whole number", where, ki->key, value);
        if (errno == ERANGE || v > INT_MAX || v < INT_MIN)
            return etm_fail(err, "%s%s: %s is out of range", where, ki->key, value);
        if (v < ki->min)
            return etm_fail(err, "%s%s: %ld is below the minimum %d", where, ki->key, v, ki->min);
        *(int *)field(hp, k) = (int)v;
        return 0;
    }
    case KEY_U64: {
        const char *p = value;
        while (isspace((unsigned char)*p)) p++;
        if (*p == '-' || *p == '+' || !isdigit((unsigned char)*p))
            return etm_fail(err, "%s%s: '%s' is not a whole number >= 0", where, ki->key, value);
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (*end != '\0' || p != value)
            return etm_fail(err, "%s%s: '%s' is not a whole number >= 0", where, ki->key, value);
        if (errno == ERANGE)
            return etm_fail(err, "%s%s: %s is out of range", where, ki->key, value);
        *(uint64_t *)field(hp, k) = (uint64_t)v;
        return 0;
    }
    case KEY_FLOAT: {
        if (ki->names && !strcmp(value, ki->names[0])) {
            *(float *)field(hp, k) = ETM_INHERIT;
            return 0;
        }
        errno = 0;
        float v = strtof(value, &end);
        if (end == value || *end != '\0' || isspace((unsigned char)value[0]))
            return etm_fail(err, "%s%s: '%s' is not a number%s%s", where, ki->key, value,
                            ki->names ? " or " : "", ki->names ? ki->names[0] : "");
        if (!isfinite(v))
            return etm_fail(err, "%s%s: '%s' is not a finite number", where, ki->key, value);
        if (ki->names && v == ETM_INHERIT) /* the number that stands for the word: say the word */
            return etm_fail(err, "%s%s: %s is below 0 (write %s for the inherited value)", where, ki->key,
                            value, ki->names[0]);
        *(float *)field(hp, k) = v;
        return 0;
    }
    case KEY_STR: {
        size_t n = strlen(value);
        if (n >= ki->size)
            return etm_fail(err, "%s%s: the value is %zu characters long; at most %zu fit", where,
                            ki->key, n, ki->size - 1);
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)value[i] < 0x20 || value[i] == 0x7f)
                return etm_fail(err, "%s%s: the value contains a control character", where, ki->key);
        char *dst = field(hp, k);
        memset(dst, 0, ki->size);
        memcpy(dst, value, n);
        return 0;
    }
    case KEY_ENUM:
        for (int i = 0; ki->names[i]; i++)
            if (!strcmp(ki->names[i], value)) {
                *(int *)field(hp, k) = i;
                return 0;
            }
        {
            char list[256];
            enum_list(ki->names, list, sizeof list);
            return etm_fail(err, "%s%s: '%s' is not one of %s", where, ki->key, value, list);
        }
    }
    return etm_fail(err, "%s%s: internal error: bad key type", where, ki->key);
}

/* The shortest %g form (6 to 9 significant digits) that strtof reads back as exactly x: 0.02
 * rather than 0.0199999996; 9 digits always suffice for a float. */
static void format_float(float x, char *buf, size_t len) {
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(buf, len, "%.*g", digits, (double)x);
        float back = strtof(buf, NULL);
        if (memcmp(&back, &x, sizeof x) == 0) return;
    }
}

/* Formats the value of key k; quote puts strings in double quotes with \" and \\ escaped. */
static void format_value(const etm_hparams *hp, int k, int quote, char *buf, size_t len) {
    const key_info *ki = &keys[k];
    switch (ki->type) {
    case KEY_INT: snprintf(buf, len, "%d", int_of(hp, k)); return;
    case KEY_U64: snprintf(buf, len, "%" PRIu64, *(const uint64_t *)cfield(hp, k)); return;
    case KEY_FLOAT:
        if (ki->names && float_of(hp, k) == ETM_INHERIT) snprintf(buf, len, "%s", ki->names[0]);
        else format_float(float_of(hp, k), buf, len);
        return;
    case KEY_ENUM: {
        int v = int_of(hp, k), n = 0;
        while (ki->names[n]) n++;
        snprintf(buf, len, "%s", v >= 0 && v < n ? ki->names[v] : "(invalid)");
        return;
    }
    case KEY_STR: {
        const char *s = cfield(hp, k);
        if (!quote) {
            snprintf(buf, len, "%s", s);
            return;
        }
        size_t o = 0;
        if (len < 3) {
            buf[0] = '\0';
            return;
        }
        buf[o++] = '"';
        for (; *s && o + 3 < len; s++) {
            if (*s == '"' || *s == '\\') buf[o++] = '\\';
            buf[o++] = *s;
        }
        buf[o++] = '"';
        buf[o] = '\0';
        return;
    }
    }
}

int etm_hparams_set(etm_hparams *hp, const char *key, const char *value, etm_error *err) {
    int k = find_key(key);
    if (k < 0) return unknown_key(err, "", key);
    return set_value(hp, k, value, "", err);
}

int etm_hparams_get(const etm_hparams *hp, const char *key, char *buf, size_t len, etm_error *err) {
    int k = find_key(key);
    if (k < 0) return unknown_key(err, "", key);
    format_value(hp, k, 0, buf, len);
    return 0;
}

const char *etm_hparams_first_difference(const etm_hparams *a, const etm_hparams *b) {
    for (int k = 0; k < N_KEYS; k++) {
        const key_info *ki = &keys[k];
        const void *x = cfield(a, k), *y = cfield(b, k);
        int differ = ki->type == KEY_STR ? strncmp(x, y, ki->size) != 0 : memcmp(x, y, ki->size) != 0;
        if (differ) return ki->key;
    }
    return NULL;
}

/* ---- validation ------------------------------------------------------------------------------ */


static void origin_note(const origins *o, const char *key, char *buf, size_t len, size_t *used) {
    int k = find_key(key);
    if (!o || k < 0 || !o->where[k][0] || *used >= len) return;
    *used += (size_t)snprintf(buf + *used, len - *used, "%s%s from %s", *used ? "; " : "", key,
                              o->where[k]);
}

/* Fails with the message and, when known, where the keys involved (a space-separated list) were
 * set. */
static int invalid(etm_error *err, const origins *o, const char *involved, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static int invalid(etm_error *err, const origins *o, const char *involved, const char *fmt, ...) {
    char msg[600], notes[420] = "";
    size_t used = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (const char *p = involved; *p;) {
        char key[64];
        size_t n = strcspn(p, " ");
        snprintf(key, sizeof key, "%.*s", (int)n, p);
        origin_note(o, key, notes, sizeof notes, &used);
        p += n;
        while (*p == ' ') p++;
    }
    if (notes[0]) return etm_fail(err, "%s (%s)", msg, notes);
    return etm_fail(err, "%s", msg);
}

static int validate(const etm_hparams *hp, const origins *o, etm_error *err) {
    /* Each key on its own: integer minimums, finite floats, known enum values. */
    for (int k = 0; k < N_KEYS; k++) {
        const key_info *ki = &keys[k];
        if (ki->type == KEY_INT && int_of(hp, k) < ki->min)
            return invalid(err, o, ki->key, "%s: %d is below the minimum %d", ki->key,
                           int_of(hp, k), ki->min);
        if (ki->type == KEY_FLOAT && !isfinite(float_of(hp, k)))
            return invalid(err, o, ki->key, "%s: %g is not a finite number", ki->key,
                           (double)float_of(hp, k));
        if (ki->type == KEY_ENUM) {
            int v = int_of(hp, k), n = 0;
            while (ki->names[n]) n++;
            if (v < 0 || v >= n) return invalid(err, o, ki->key, "%s: invalid value %d", ki->key, v);
        }
        if (ki->type == KEY_STR && memchr(cfield(hp, k), '\0', ki->size) == NULL)
            return invalid(err, o, ki->key, "%s: the string is not terminated", ki->key);
    }

    /* Float ranges. */
    struct {
        const char *key;
        double lo, hi;
        int lo_open, hi_open; /* 1: the bound itself is not allowed */
    } ranges[] = {
        {"rope_base", 0, INFINITY, 1, 0},       {"logit_cap", 0, INFINITY, 1, 0},
        {"norm_eps", 0, INFINITY, 1, 0},        {"aux_alpha", 0, INFINITY, 0, 0},
        {"lossfree_rate", 0, INFINITY, 0, 0},   {"z_loss", 0, INFINITY, 0, 0},
        {"capacity_factor", 0, INFINITY, 0, 0}, {"et_beta", 0, 1, 0, 1},
        {"et_capacity", 0, 1, 0, 0},            {"lr_matrix", 0, INFINITY, 0, 0},
        {"lr_embed", 0, INFINITY, 0, 0},        {"lr_head", 0, INFINITY, 0, 0},
        {"lr_router", 0, INFINITY, 0, 0},       {"adam_beta1", 0, 1, 0, 1},
        {"adam_beta2", 0, 1, 0, 1},             {"adam_eps", 0, INFINITY, 1, 0},
        {"weight_decay", 0, INFINITY, 0, 0},    {"muon_momentum_start", 0, 1, 0, 1},
        {"muon_momentum_end", 0, 1, 0, 1},      {"decay_fraction", 0, 1, 0, 0},
        {"final_lr_frac", 0, 1, 0, 0},          {"grad_clip", 0, INFINITY, 0, 0},
        {"matrix_weight_decay", 0, INFINITY, 0, 0}, {"lr_expert_scale", 0, INFINITY, 1, 0},
    };
    for (size_t r = 0; r < ETM_ARRAY_LEN(ranges); r++) {
        int k = find_key(ranges[r].key);
        double v = float_of(hp, k);
        if (keys[k].names && v == ETM_INHERIT) continue; /* the word, not a number */
        int below = ranges[r].lo_open ? v <= ranges[r].lo : v < ranges[r].lo;
        int above = ranges[r].hi_open ? v >= ranges[r].hi : v > ranges[r].hi;
        if (below || above) {
            char range[64];
            if (isinf(ranges[r].hi))
                snprintf(range, sizeof range, "%s %g", ranges[r].lo_open ? ">" : ">=", ranges[r].lo);
            else
                snprintf(range, sizeof range, "in %c%g, %g%c", ranges[r].lo_open ? '(' : '[',
                         ranges[r].lo, ranges[r].hi, ranges[r].hi_open ? ')' : ']');
            char value[32];
            format_float((float)v, value, sizeof value);
            return invalid(err, o, ranges[r].key, "%s = %s must be %s%s%s", ranges[r].key, value, range,
                           keys[k].names ? " or " : "", keys[k].names ? keys[k].names[0] : "");
        }
    }

    /* Attention shapes. */
    if (hp->d_model % hp->n_head)
        return invalid(err, o, "n_head d_model", "n_head = %d does not divide d_model = %d",
                       hp->n_head, hp->d_model);
    if (hp->n_head % hp->n_kv_head)
        return invalid(err, o, "n_kv_head n_head", "n_kv_head = %d does not divide n_head = %d",
                       hp->n_kv_head, hp->n_head);
    if (etm_head_dim(hp) % 2)
        return invalid(err, o, "d_model n_head",
                       "head_dim = d_model / n_head = %d / %d = %d is odd; rotary embeddings need it even",
                       hp->d_model, hp->n_head, etm_head_dim(hp));

    /* Mixture of experts. */
    if (hp->dense_layers > hp->n_layer)
        return invalid(err, o, "dense_layers n_layer", "dense_layers = %d exceeds n_layer = %d",
                       hp->dense_layers, hp->n_layer);
    if (hp->router != ETM_ROUTER_DENSE) {
        if (hp->top_k > hp->n_routed)
            return invalid(err, o, "top_k n_routed", "top_k = %d exceeds n_routed = %d", hp->top_k,
                           hp->n_routed);
        /* tc: tc_score picks sigmoid or softmax gates; router_activation may add relu (on
         * sigmoid-scored tc). The authors' tc has no softmax_k (model_base.py:105), and their
         * softmax_e variants on tc are a plain softmax over the routed experts with an unscaled
         * shared expert (token_choice.py:75-79): that is tc_score = softmax here. */
        if (hp->router == ETM_ROUTER_TC && hp->router_activation != ETM_GATE_SIGMOID &&
            !(hp->router_activation == ETM_GATE_RELU && hp->tc_score == ETM_SCORE_SIGMOID))
            return invalid(err, o, "router_activation router tc_score",
                           "router_activation = %s with router = tc: tc takes sigmoid (tc_score "
                           "decides: sigmoid or softmax) or relu with tc_score = sigmoid; the "
                           "authors' softmax_e on tc is tc_score = softmax, softmax_k is ec/et only",
                           gate_names[hp->router_activation]);
        if (hp->router == ETM_ROUTER_EC || hp->router == ETM_ROUTER_ET) {
            if (hp->pool_seqs > hp->batch_size || (hp->pool_seqs && hp->batch_size % hp->pool_seqs))
                return invalid(err, o, "pool_seqs batch_size",
                               "pool_seqs = %d does not divide batch_size = %d", hp->pool_seqs,
                               hp->batch_size);
            long long pool = (long long)(hp->pool_seqs ? hp->pool_seqs : hp->batch_size) * hp->seq_len;
            if (pool * hp->top_k < hp->n_routed)
                return invalid(err, o, "pool_seqs batch_size seq_len top_k n_routed",
                               "a routing pool of %lld tokens gives each of the %d experts less than "
                               "one token at top_k = %d (k_target = pool * top_k / n_routed < 1)",
                               pool, hp->n_routed, hp->top_k);
        }
    }

    /* ec_pool_scope = step: a routing pass before each step selects over every token of the step
     * (router_pool.h); what it cannot do yet is refused rather than silently done otherwise. */
    if (hp->ec_pool_scope == ETM_EC_POOL_STEP) {
        if (hp->router != ETM_ROUTER_EC && hp->router != ETM_ROUTER_ET)
            return invalid(err, o, "ec_pool_scope router",
                           "ec_pool_scope = step needs router = ec or et (router = %s has no "
                           "expert-choice pools)", router_names[hp->router]);
        if (hp->pool_seqs > 0)
            return invalid(err, o, "ec_pool_scope pool_seqs",
                           "ec_pool_scope = step pools the whole step: pool_seqs = %d must be 0",
                           hp->pool_seqs);
        if (hp->router_activation == ETM_GATE_SOFTMAX_K)
            return invalid(err, o, "ec_pool_scope router_activation",
                           "ec_pool_scope = step with router_activation = softmax_k: the gates would "
                           "be a softmax over one micro-batch while the pool is the step; not built");
    }

    /* Strings that must name something. */
    if (!hp->backend[0]) return invalid(err, o, "backend", "backend: empty (use cpu or cuda)");
    if (!hp->tokenizer[0]) return invalid(err, o, "tokenizer", "tokenizer: empty");
    return 0;
}

int etm_hparams_validate(const etm_hparams *hp, etm_error *err) { return validate(hp, NULL, err); }

/* ---- for the config text (hparams_text.c; declared in hparams_keys.h) ------------------------ */

typedef char origins_hold_every_key[N_KEYS <= ETM_HPARAMS_MAX_KEYS ? 1 : -1];

const key_info *etm_hparams_key_info(int k) { return &keys[k]; }

int etm_hparams_is_section(const char *name) {
    for (int i = 0; sections[i]; i++)
        if (!strcmp(sections[i], name)) return 1;
    return 0;
}

int etm_hparams_find_key(const char *key) { return find_key(key); }

int etm_hparams_unknown_key(etm_error *err, const char *where, const char *key) {
    return unknown_key(err, where, key);
}

int etm_hparams_set_value(etm_hparams *hp, int k, const char *value, const char *where, etm_error *err) {
    return set_value(hp, k, value, where, err);
}

void etm_hparams_format_value(const etm_hparams *hp, int k, int quote, char *buf, size_t len) {
    format_value(hp, k, quote, buf, len);
}

void etm_hparams_enum_list(const char *const *names, char *buf, size_t len) { enum_list(names, buf, len); }

int etm_hparams_validate_from(const etm_hparams *hp, const origins *o, etm_error *err) {
    return validate(hp, o, err);
}
