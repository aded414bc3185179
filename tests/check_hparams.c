/* check_hparams.c: tests of the configuration: defaults equal the demo preset, every preset loads,
 * printing and parsing round-trip to the identical struct, every key is documented, and every
 * kind of bad input fails with a message that names the key (and the file and line). */
#include "common.h"
#include "hparams.h"
#include "testutil.h"

#include <float.h>
#include <math.h>

/* Writes text to a fresh temp file; its path goes to path. */
static void write_temp(char *path, size_t len, const char *text) {
    char dir[256];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, len, "%s/test.conf", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Loads text as a config file; returns the rc and leaves the message in err. */
static int load_text(etm_hparams *hp, const char *text, etm_error *err) {
    char path[512];
    write_temp(path, sizeof path, text);
    return etm_hparams_load(hp, path, err);
}

#define ASSERT_MSG_HAS(err, s) \
    ck_assert_msg(strstr((err).msg, (s)) != NULL, "message '%s' lacks '%s'", (err).msg, (s))

START_TEST(defaults_are_valid_and_equal_the_demo_preset) {
    etm_hparams d, demo;
    etm_error err = {{0}};
    etm_hparams_defaults(&d);
    ck_assert_msg(etm_hparams_validate(&d, &err) == 0, "%s", err.msg);
    ck_assert_msg(etm_hparams_load(&demo, "demo", &err) == 0, "%s", err.msg);
    const char *diff = etm_hparams_first_difference(&d, &demo);
    ck_assert_msg(diff == NULL, "demo.conf and the defaults differ in %s", diff ? diff : "");
    /* The comparison itself notices a change in each kind of field. */
    demo.d_model = 256;
    ck_assert_str_eq(etm_hparams_first_difference(&d, &demo), "d_model");
    demo = d;
    demo.et_beta = nextafterf(demo.et_beta, 1.0f);
    ck_assert_str_eq(etm_hparams_first_difference(&d, &demo), "et_beta");
    demo = d;
    demo.out_dir[0] = 'x';
    ck_assert_str_eq(etm_hparams_first_difference(&d, &demo), "out_dir");
}
END_TEST

START_TEST(presets_load_with_their_sizes) {
    etm_hparams hp;
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_load(&hp, "bench", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(hp.d_model, 512);
    ck_assert_int_eq(hp.n_layer, 8);
    ck_assert_int_eq(hp.n_head, 8);
    ck_assert_int_eq(hp.seq_len, 512);
    ck_assert_int_eq(hp.vocab_size, 8192);
    ck_assert_int_eq(hp.n_routed, 16);
    ck_assert_int_eq(hp.n_shared, 1);
    ck_assert_int_eq(hp.expert_hidden, 2 * hp.d_model);
    ck_assert_int_eq(hp.router, ETM_ROUTER_ET);

    ck_assert_msg(etm_hparams_load(&hp, "d12", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(hp.n_layer, 12);
    ck_assert_int_eq(hp.d_model, 768);
    ck_assert_int_eq(hp.n_head, 6);
    ck_assert_int_eq(hp.n_kv_head, 2);
    ck_assert_int_eq(hp.expert_hidden, 2 * hp.d_model);
    ck_assert_int_eq(hp.ffn_hidden, 4 * hp.d_model);
    ck_assert_int_eq(hp.batch_size * hp.grad_accum * hp.seq_len, 524288);
    /* The paper-scale presets follow the recipe: F.rms_norm's default epsilon, nanochat's 300-step
     * Muon momentum warm-up (the demo's defaults keep 1e-6 and 100, doc/config.md says why). */
    ck_assert(hp.norm_eps == FLT_EPSILON);
    ck_assert_int_eq(hp.muon_warmup_steps, 300);

    ck_assert_msg(etm_hparams_load(&hp, "d20", &err) == 0, "%s", err.msg);
    ck_assert(hp.norm_eps == FLT_EPSILON);
    ck_assert_int_eq(hp.muon_warmup_steps, 300);
    ck_assert_int_eq(hp.n_layer, 20);
    ck_assert_int_eq(hp.d_model, 1280);
    ck_assert_int_eq(hp.n_head, 10);
    ck_assert_int_eq(hp.n_kv_head, 2);
    ck_assert_int_eq(hp.expert_hidden, 2 * hp.d_model);
    ck_assert_int_eq(hp.batch_size * hp.grad_accum * hp.seq_len, 524288);
    /* The AdamW rates follow nanochat's (d/768)^-0.5 scaling. */
    ck_assert_float_eq_tol(hp.lr_head, 0.004 * sqrt(768.0 / 1280.0), 1e-8);

    /* A preset given as a path works too; an unknown preset says where it looked. */
    char path[1024], dir[1024];
    snprintf(path, sizeof path, "%s/configs/d12.conf", etm_data_dir(dir, sizeof dir));
    ck_assert_msg(etm_hparams_load(&hp, path, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(hp.d_model, 768);
    ck_assert_int_ne(etm_hparams_load(&hp, "no_such_preset", &err), 0);
    ASSERT_MSG_HAS(err, "no preset 'no_such_preset'");
    ASSERT_MSG_HAS(err, "configs/no_such_preset.conf");
}
END_TEST

static void assert_round_trip(const etm_hparams *hp) {
    etm_error err = {{0}};
    char *text = etm_hparams_to_string(hp);
    etm_hparams back;
    memset(&back, 0xab, sizeof back);
    ck_assert_msg(etm_hparams_from_string(&back, text, "round-trip", &err) == 0, "%s\n%s", err.msg, text);
    const char *diff = etm_hparams_first_difference(hp, &back);
    ck_assert_msg(diff == NULL, "key %s changed in the round trip:\n%s", diff ? diff : "", text);
    /* Printing again gives the same text. */
    char *again = etm_hparams_to_string(&back);
    ck_assert_str_eq(text, again);
    /* Every key is in the text. */
    for (int i = 0; i < etm_hparams_n_keys(); i++) {
        char needle[128];
        snprintf(needle, sizeof needle, "\n%s = ", etm_hparams_key(i));
        ck_assert_msg(strstr(text, needle) != NULL, "key %s missing from the printed config",
                      etm_hparams_key(i));
    }
    free(text);
    free(again);
}

/* A checkpoint written before a key existed has no line for it; it must read back as the value it
 * was trained with. muon_expert_layout came after the first checkpoints, which were per expert;
 * router_activation after those with sigmoid gates; muon_ns_gram after those with full GEMMs. */
static const struct {
    const char *line; /* the key's line with a non-default value, as the printer writes it */
    size_t offset;    /* the enum field */
    int set, old;     /* the value written, the value a config without the key gets */
} older_keys[] = {
    {"muon_expert_layout = stacked", offsetof(etm_hparams, muon_expert_layout), ETM_MUON_STACKED,
     ETM_MUON_PER_EXPERT},
    {"muon_ns_gram = symmetric", offsetof(etm_hparams, muon_ns_gram), ETM_NS_GRAM_SYMMETRIC,
     ETM_NS_GRAM_FULL},
    {"router_activation = softmax_e", offsetof(etm_hparams, router_activation), ETM_GATE_SOFTMAX_E,
     ETM_GATE_SIGMOID},
};

START_TEST(configs_older_than_a_key_keep_its_old_behaviour) {
    etm_hparams hp, back;
    etm_hparams_defaults(&hp);
    *(int *)((char *)&hp + older_keys[_i].offset) = older_keys[_i].set;
    char *text = etm_hparams_to_string(&hp);
    char want[96];
    snprintf(want, sizeof want, "\n%s\n", older_keys[_i].line);
    char *line = strstr(text, want);
    ck_assert_msg(line != NULL, "no line '%s'", older_keys[_i].line);
    size_t cut = strlen(want) - 1;
    memmove(line, line + cut, strlen(line + cut) + 1);
    ck_assert_ptr_null(strstr(text, older_keys[_i].line));
    etm_error err = {{0}};
    memset(&back, 0xab, sizeof back);
    ck_assert_msg(etm_hparams_from_string(&back, text, "old.safetensors", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(*(int *)((char *)&back + older_keys[_i].offset), older_keys[_i].old);
    /* Every other key as written. */
    *(int *)((char *)&back + older_keys[_i].offset) = older_keys[_i].set;
    const char *diff = etm_hparams_first_difference(&hp, &back);
    ck_assert_msg(diff == NULL, "%s changed", diff ? diff : "");
    free(text);
}
END_TEST

/* Gate functions tc has no meaning for are refused, naming where the keys were set. */
START_TEST(router_activation_rejects_what_tc_cannot_use) {
    static const char *const bad[] = {
        "router = tc\nrouter_activation = softmax_k\n",
        "router = tc\nrouter_activation = softmax_e\n",
        "router = tc\ntc_score = softmax\nrouter_activation = relu\n",
    };
    etm_hparams hp;
    etm_error err = {{0}};
    for (size_t i = 0; i < ETM_ARRAY_LEN(bad); i++) {
        etm_hparams_defaults(&hp);
        ck_assert_int_ne(etm_hparams_from_string(&hp, bad[i], "run.conf", &err), 0);
        ck_assert_msg(strstr(err.msg, "router_activation") && strstr(err.msg, "run.conf:2"),
                      "case %zu: %s", i, err.msg);
    }
    etm_hparams_defaults(&hp);
    ck_assert_msg(etm_hparams_from_string(&hp, "router = tc\nrouter_activation = relu\n", "run.conf",
                                          &err) == 0, "%s", err.msg);
    ck_assert_int_eq(hp.router_activation, ETM_GATE_RELU);
    etm_hparams_defaults(&hp);
    ck_assert_msg(etm_hparams_from_string(&hp, "router = ec\nrouter_activation = softmax_k\n", "run.conf",
                                          &err) == 0, "%s", err.msg);
}
END_TEST

/* et_cutoff_scope came after checkpoints whose cut-offs were per pool: without the line, pool. */
START_TEST(configs_without_cutoff_scope_read_as_pool) {
    etm_hparams hp, back;
    etm_hparams_defaults(&hp);
    hp.et_cutoff_scope = ETM_CUTOFF_STEP;
    char *text = etm_hparams_to_string(&hp);
    const char *key = "\net_cutoff_scope = step";
    char *line = strstr(text, key);
    ck_assert_ptr_nonnull(line);
    memmove(line, line + strlen(key), strlen(line + strlen(key)) + 1);
    ck_assert_ptr_null(strstr(text, "et_cutoff_scope"));
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_from_string(&back, text, "old.safetensors", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(back.et_cutoff_scope, ETM_CUTOFF_POOL);
    free(text);
}
END_TEST

/* ec_pool_scope came after checkpoints whose expert choice was per micro-batch: without the line,
 * microbatch; step is taken with ec and et, and refused (naming where it was set) with the routers and
 * settings it is not built for. */
START_TEST(ec_pool_scope_defaults_reads_and_refusals) {
    etm_hparams hp, back;
    etm_hparams_defaults(&hp);
    ck_assert_int_eq(hp.ec_pool_scope, ETM_EC_POOL_MICROBATCH);
    hp.router = ETM_ROUTER_EC;
    hp.ec_pool_scope = ETM_EC_POOL_STEP;
    char *text = etm_hparams_to_string(&hp);
    const char *key = "\nec_pool_scope = step";
    char *line = strstr(text, key);
    ck_assert_ptr_nonnull(line);
    memmove(line, line + strlen(key), strlen(line + strlen(key)) + 1);
    ck_assert_ptr_null(strstr(text, "ec_pool_scope"));
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_from_string(&back, text, "old.safetensors", &err) == 0, "%s", err.msg);
    ck_assert_int_eq(back.ec_pool_scope, ETM_EC_POOL_MICROBATCH);
    free(text);
    etm_hparams_defaults(&hp);
    ck_assert_msg(etm_hparams_from_string(&hp, "router = ec\nec_pool_scope = step\n", "run.conf", &err) == 0,
                  "%s", err.msg);
    ck_assert_int_eq(hp.ec_pool_scope, ETM_EC_POOL_STEP);
    etm_hparams_defaults(&hp);
    ck_assert_msg(etm_hparams_from_string(&hp, "router = et\nec_pool_scope = step\n", "run.conf", &err) == 0,
                  "%s", err.msg);
    const char *bad[][2] = {
        {"router = dense\nec_pool_scope = step\n", "router = dense"},
        {"router = tc\nec_pool_scope = step\n", "router = tc"},
        {"router = ec\nec_pool_scope = step\npool_seqs = 1\n", "pool_seqs"},
        {"router = ec\nec_pool_scope = step\nrouter_activation = softmax_k\n", "softmax_k"},
        {"router = ec\nec_pool_scope = global\n", "ec_pool_scope"},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(bad); i++) {
        etm_hparams_defaults(&hp);
        ck_assert_int_ne(etm_hparams_from_string(&hp, bad[i][0], "run.conf", &err), 0);
        ck_assert_msg(strstr(err.msg, bad[i][1]) && strstr(err.msg, "run.conf:2"), "case %zu: %s", i, err.msg);
    }
}
END_TEST

/* lr_expert_scale and matrix_weight_decay (issue 15) came after checkpoints trained with an
 * unscaled expert rate and weight_decay on every group: without their lines, 1 and inherit.
 * "inherit" is printed and read back as itself; a number as the number. */
START_TEST(configs_without_expert_scale_or_matrix_decay_read_as_before) {
    etm_hparams hp, back;
    etm_hparams_defaults(&hp);
    ck_assert(hp.lr_expert_scale == 1.0f && hp.matrix_weight_decay == ETM_INHERIT);
    hp.weight_decay = 0.25f;
    ck_assert(etm_matrix_weight_decay(&hp) == 0.25f);
    char *text = etm_hparams_to_string(&hp);
    ck_assert_ptr_nonnull(strstr(text, "\nmatrix_weight_decay = inherit\n"));
    free(text);
    hp.lr_expert_scale = 0.5f;
    hp.matrix_weight_decay = 0.0f; /* a number, even 0, no longer inherits */
    ck_assert(etm_matrix_weight_decay(&hp) == 0.0f);
    assert_round_trip(&hp);
    text = etm_hparams_to_string(&hp);
    const char *lines[] = {"\nlr_expert_scale = 0.5", "\nmatrix_weight_decay = 0"};
    for (size_t i = 0; i < ETM_ARRAY_LEN(lines); i++) {
        char *line = strstr(text, lines[i]);
        ck_assert_msg(line != NULL, "no line '%s'", lines[i] + 1);
        memmove(line, line + strlen(lines[i]), strlen(line + strlen(lines[i])) + 1);
    }
    ck_assert_ptr_null(strstr(text, "lr_expert_scale"));
    ck_assert_ptr_null(strstr(text, "matrix_weight_decay"));
    etm_error err = {{0}};
    ck_assert_msg(etm_hparams_from_string(&back, text, "old.safetensors", &err) == 0, "%s", err.msg);
    ck_assert(back.lr_expert_scale == 1.0f);
    ck_assert(back.matrix_weight_decay == ETM_INHERIT && etm_matrix_weight_decay(&back) == 0.25f);
    free(text);
    /* the word, a number, and what is neither */
    ck_assert_int_eq(etm_hparams_set(&hp, "matrix_weight_decay", "inherit", &err), 0);
    ck_assert(hp.matrix_weight_decay == ETM_INHERIT);
    ck_assert_int_eq(etm_hparams_set(&hp, "matrix_weight_decay", "0.1", &err), 0);
    ck_assert(hp.matrix_weight_decay == 0.1f);
    ck_assert_int_ne(etm_hparams_set(&hp, "matrix_weight_decay", "inherits", &err), 0);
    ASSERT_MSG_HAS(err, "matrix_weight_decay: 'inherits' is not a number or inherit");
    ck_assert_int_ne(etm_hparams_set(&hp, "matrix_weight_decay", "-1", &err), 0);
    ASSERT_MSG_HAS(err, "matrix_weight_decay: -1 is below 0 (write inherit");
    ck_assert_int_ne(etm_hparams_set(&hp, "lr_expert_scale", "inherit", &err), 0);
    ASSERT_MSG_HAS(err, "lr_expert_scale: 'inherit' is not a number");
}
END_TEST

START_TEST(print_and_parse_round_trip) {
    const char *presets[] = {"demo", "bench", "d12", "d20"};
    etm_error err = {{0}};
    for (size_t i = 0; i < ETM_ARRAY_LEN(presets); i++) {
        etm_hparams hp;
        ck_assert_msg(etm_hparams_load(&hp, presets[i], &err) == 0, "%s", err.msg);
        assert_round_trip(&hp);
    }
    /* Awkward values: floats that need all 9 digits, tiny and huge, strings with quotes, a
     * backslash, '#', '=' and surrounding spaces, an empty string, the largest seed. */
    etm_hparams hp;
    etm_hparams_defaults(&hp);
    hp.lr_matrix = 0.1f;
    hp.lr_embed = nextafterf(0.3f, 1.0f);
    hp.adam_eps = 1.17549435e-38f; /* FLT_MIN */
    hp.rope_base = 3.40282347e38f; /* FLT_MAX */
    hp.norm_eps = 1.4e-45f;        /* the smallest denormal */
    hp.et_beta = 0.999999940f;     /* the float just below 1 */
    hp.weight_decay = 1.0f / 3.0f;
    hp.seed = UINT64_MAX;
    snprintf(hp.train_data, sizeof hp.train_data, "  dir with \"quotes\" \\ # and = signs  ");
    hp.val_data[0] = '\0';
    hp.router = ETM_ROUTER_TC;
    hp.tc_balance = ETM_BALANCE_LOSSFREE;
    hp.tc_score = ETM_SCORE_SOFTMAX;
    hp.matrix_optimizer = ETM_OPT_ADAMW;
    ck_assert_msg(etm_hparams_validate(&hp, &err) == 0, "%s", err.msg);
    assert_round_trip(&hp);
}
END_TEST

START_TEST(every_key_is_documented) {
    /* etm_data_dir, not test_data_dir: it finds the source tree's data/ (and so doc/) even when
     * the test harness does not export ETM_DATA_DIR. */
    char path[1024], dir[1024];
    snprintf(path, sizeof path, "%s/../doc/config.md", etm_data_dir(dir, sizeof dir));
    etm_error err = {{0}};
    char *doc = etm_read_file(path, NULL, &err);
    ck_assert_msg(doc != NULL, "%s", err.msg);
    ck_assert_int_gt(etm_hparams_n_keys(), 50);
    for (int i = 0; i < etm_hparams_n_keys(); i++) {
        char row[128];
        snprintf(row, sizeof row, "| `%s` |", etm_hparams_key(i));
        ck_assert_msg(strstr(doc, row) != NULL, "doc/config.md has no table row for %s", etm_hparams_key(i));
    }
    ck_assert_ptr_null(etm_hparams_key(etm_hparams_n_keys()));
    ck_assert_ptr_null(etm_hparams_key(-1));
    free(doc);
}
END_TEST

START_TEST(set_parses_each_type) {
    etm_hparams hp;
    etm_error err = {{0}};
    etm_hparams_defaults(&hp);
    ck_assert_int_eq(etm_hparams_set(&hp, "d_model", "256", &err), 0);
    ck_assert_int_eq(hp.d_model, 256);
    ck_assert_int_eq(etm_hparams_set(&hp, "et_beta", "0.995", &err), 0);
    ck_assert(hp.et_beta == 0.995f);
    ck_assert_int_eq(etm_hparams_set(&hp, "seed", "18446744073709551615", &err), 0);
    ck_assert(hp.seed == UINT64_MAX);
    ck_assert_int_eq(etm_hparams_set(&hp, "router", "tc", &err), 0);
    ck_assert_int_eq(hp.router, ETM_ROUTER_TC);
    ck_assert_int_eq(etm_hparams_set(&hp, "tc_balance", "switch", &err), 0);
    ck_assert_int_eq(hp.tc_balance, ETM_BALANCE_SWITCH);
    ck_assert_int_eq(etm_hparams_set(&hp, "matrix_optimizer", "adamw", &err), 0);
    ck_assert_int_eq(hp.matrix_optimizer, ETM_OPT_ADAMW);
    ck_assert_int_eq(etm_hparams_set(&hp, "out_dir", "runs/x y", &err), 0);
    ck_assert_str_eq(hp.out_dir, "runs/x y");
    ck_assert_int_eq(etm_hparams_set_arg(&hp, "n_layer=6", &err), 0);
    ck_assert_int_eq(hp.n_layer, 6);
    ck_assert_int_eq(etm_hparams_set_arg(&hp, "val_data=", &err), 0);
    ck_assert_str_eq(hp.val_data, "");

    char buf[64];
    ck_assert_int_eq(etm_hparams_get(&hp, "router", buf, sizeof buf, &err), 0);
    ck_assert_str_eq(buf, "tc");
    ck_assert_int_eq(etm_hparams_get(&hp, "et_beta", buf, sizeof buf, &err), 0);
    ck_assert_str_eq(buf, "0.995"); /* the shortest text that reads back exactly */
    ck_assert_int_ne(etm_hparams_get(&hp, "nope", buf, sizeof buf, &err), 0);
    ASSERT_MSG_HAS(err, "unknown key 'nope'");
}
END_TEST

/* Every finite float, printed and parsed again, comes back with the same bits (a sample of random
 * bit patterns, plus the extremes). */
START_TEST(floats_read_back_bit_identical) {
    etm_hparams hp;
    etm_error err = {{0}};
    etm_hparams_defaults(&hp);
    uint64_t state = 88172645463325252ULL;
    int tried = 0;
    for (int i = 0; i < 200000 + 6; i++) {
        uint32_t bits;
        if (i < 6) {
            const uint32_t special[6] = {0x00000001u, 0x7f7fffffu, 0x80000000u, 0x00800000u, 0x3f800001u,
                                         0xff7fffffu};
            bits = special[i];
        } else {
            state ^= state << 13, state ^= state >> 7, state ^= state << 17;
            bits = (uint32_t)(state >> 32);
        }
        float x;
        memcpy(&x, &bits, sizeof x);
        if (!isfinite(x)) continue;
        hp.lr_matrix = x;
        char buf[64];
        ck_assert_int_eq(etm_hparams_get(&hp, "lr_matrix", buf, sizeof buf, &err), 0);
        hp.lr_matrix = 0.0f;
        ck_assert_msg(etm_hparams_set(&hp, "lr_matrix", buf, &err) == 0, "%s", err.msg);
        ck_assert_msg(memcmp(&hp.lr_matrix, &x, sizeof x) == 0, "0x%08x printed as %s reads back differently",
                      bits, buf);
        tried++;
    }
    ck_assert_int_gt(tried, 190000);
}
END_TEST

/* Each bad value fails, names the key, says why, and leaves the field unchanged. */
START_TEST(set_rejects_bad_values) {
    struct {
        const char *key, *value, *expect;
    } cases[] = {
        {"d_model", "abc", "d_model: 'abc' is not a whole number"},
        {"d_model", "12.5", "not a whole number"},
        {"d_model", "", "not a whole number"},
        {"d_model", "-64", "d_model: -64 is below the minimum 1"},
        {"dense_layers", "-1", "below the minimum 0"},
        {"n_layer", "99999999999", "out of range"},
        {"seed", "-1", "seed: '-1' is not a whole number >= 0"},
        {"seed", "18446744073709551616", "out of range"},
        {"et_beta", "high", "et_beta: 'high' is not a number"},
        {"et_beta", "nan", "not a finite number"},
        {"lr_matrix", "1e99", "not a finite number"},
        {"lr_matrix", "0.1x", "not a number"},
        {"router", "expert", "router: 'expert' is not one of dense, tc, ec, et"},
        {"tc_balance", "AUX", "not one of none, aux, switch, lossfree"},
        {"matrix_optimizer", "sgd", "not one of muon, adamw"},
        {"backend", "cpu-with-a-name-far-longer-than-thirty-two-characters", "at most 31 fit"},
        {"out_dir", "a\tb", "control character"},
        {"d_modle", "64", "unknown key 'd_modle' (did you mean 'd_model'?)"},
        {"frobnicate", "1", "unknown key 'frobnicate'"},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++) {
        etm_hparams hp, before;
        etm_error err = {{0}};
        etm_hparams_defaults(&hp);
        before = hp;
        ck_assert_msg(etm_hparams_set(&hp, cases[i].key, cases[i].value, &err) != 0, "%s=%s accepted",
                      cases[i].key, cases[i].value);
        ASSERT_MSG_HAS(err, cases[i].expect);
        ck_assert_ptr_null(etm_hparams_first_difference(&hp, &before));
    }
    etm_hparams hp;
    etm_error err = {{0}};
    etm_hparams_defaults(&hp);
    ck_assert_int_ne(etm_hparams_set_arg(&hp, "d_model", &err), 0);
    ASSERT_MSG_HAS(err, "expected key=value");
    ck_assert_int_ne(etm_hparams_set_arg(&hp, "=5", &err), 0);
    ASSERT_MSG_HAS(err, "expected key=value");
}
END_TEST

/* Each inconsistent combination fails validation with a message naming the keys. */
START_TEST(validate_rejects_inconsistent_settings) {
    struct {
        const char *args[3];
        const char *expect;
    } cases[] = {
        {{"n_head=5"}, "n_head = 5 does not divide d_model = 96"},
        {{"n_kv_head=2"}, "n_kv_head = 2 does not divide n_head = 3"},
        {{"d_model=90", "n_head=6", "n_kv_head=1"}, "head_dim = d_model / n_head = 90 / 6 = 15 is odd"},
        {{"top_k=9"}, "top_k = 9 exceeds n_routed = 8"},
        {{"dense_layers=5"}, "dense_layers = 5 exceeds n_layer = 4"},
        {{"router=dense", "dense_layers=7"}, "dense_layers = 7 exceeds n_layer = 4"},
        {{"et_beta=1"}, "et_beta = 1 must be in [0, 1)"},
        {{"lr_expert_scale=0"}, "lr_expert_scale = 0 must be > 0"},
        {{"lr_expert_scale=-2"}, "lr_expert_scale = -2 must be > 0"},
        {{"matrix_weight_decay=-0.5"}, "matrix_weight_decay = -0.5 must be >= 0 or inherit"},
        {{"et_beta=-0.5"}, "et_beta = -0.5 must be in [0, 1)"},
        {{"et_capacity=-0.25"}, "et_capacity = -0.25 must be in [0, 1]"},
        {{"capacity_factor=-1"}, "capacity_factor = -1 must be >= 0"},
        {{"adam_beta2=1"}, "adam_beta2 = 1 must be in [0, 1)"},
        {{"adam_eps=0"}, "adam_eps = 0 must be > 0"},
        {{"lr_head=-0.1"}, "lr_head = -0.1 must be >= 0"},
        {{"muon_momentum_end=1.5"}, "muon_momentum_end = 1.5 must be in [0, 1)"},
        {{"decay_fraction=2"}, "decay_fraction = 2 must be in [0, 1]"},
        {{"grad_clip=-1"}, "grad_clip = -1 must be >= 0"},
        {{"logit_cap=0"}, "logit_cap = 0 must be > 0"},
        {{"pool_seqs=3"}, "pool_seqs = 3 does not divide batch_size = 16"},
        {{"pool_seqs=32"}, "pool_seqs = 32 does not divide batch_size = 16"},
        {{"router=ec", "seq_len=1", "batch_size=4"}, "less than one token"},
        {{"backend="}, "backend: empty"},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++) {
        etm_hparams hp;
        etm_error err = {{0}};
        etm_hparams_defaults(&hp);
        int n = 0;
        while (n < 3 && cases[i].args[n]) {
            ck_assert_msg(etm_hparams_set_arg(&hp, cases[i].args[n], &err) == 0, "%s", err.msg);
            n++;
        }
        ck_assert_msg(etm_hparams_validate(&hp, &err) != 0, "case %zu (%s) accepted", i, cases[i].args[0]);
        ASSERT_MSG_HAS(err, cases[i].expect);
        /* Through configure the message also says which argument set the key. */
        ck_assert_int_ne(etm_hparams_configure(&hp, NULL, n, (char *const *)cases[i].args, &err), 0);
        ASSERT_MSG_HAS(err, cases[i].expect);
        ASSERT_MSG_HAS(err, "from argument '");
    }
    /* Settings that only matter for MoE are not checked for a dense model. */
    etm_hparams hp;
    etm_error err = {{0}};
    etm_hparams_defaults(&hp);
    hp.router = ETM_ROUTER_DENSE;
    hp.top_k = 99;
    ck_assert_msg(etm_hparams_validate(&hp, &err) == 0, "%s", err.msg);
    /* A struct filled by code is checked too (values the parser would have refused). */
    etm_hparams_defaults(&hp);
    hp.vocab_size = 0;
    ck_assert_int_ne(etm_hparams_validate(&hp, &err), 0);
    ASSERT_MSG_HAS(err, "vocab_size: 0 is below the minimum 1");
    etm_hparams_defaults(&hp);
    hp.z_loss = NAN;
    ck_assert_int_ne(etm_hparams_validate(&hp, &err), 0);
    ASSERT_MSG_HAS(err, "z_loss");
    etm_hparams_defaults(&hp);
    hp.router = (etm_router_kind)7;
    ck_assert_int_ne(etm_hparams_validate(&hp, &err), 0);
    ASSERT_MSG_HAS(err, "router: invalid value 7");
}
END_TEST

START_TEST(config_files_parse_comments_sections_quotes) {
    etm_hparams hp;
    etm_error err = {{0}};
    const char *text = "# a comment\n"
                       "\n"
                       "[model]   # sections are decorative\n"
                       "  d_model=128   \n"
                       "n_head = 4 # trailing comment\n"
                       "n_kv_head = 4\r\n"
                       "[ run ]\n"
                       "out_dir = runs/a#b   # a '#' inside a word is kept\n"
                       "train_data = \"with # hash and \\\"quote\\\"\"  # comment\n"
                       "val_data = \"\"\n"
                       "[moe]\n"
                       "seed = 42    # any key may sit under any section\n";
    ck_assert_msg(load_text(&hp, text, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(hp.d_model, 128);
    ck_assert_int_eq(hp.n_head, 4);
    ck_assert_int_eq(hp.n_kv_head, 4);
    ck_assert_str_eq(hp.out_dir, "runs/a#b");
    ck_assert_str_eq(hp.train_data, "with # hash and \"quote\"");
    ck_assert_str_eq(hp.val_data, "");
    ck_assert(hp.seed == 42);
    /* Keys the file leaves out keep their defaults. */
    etm_hparams d;
    etm_hparams_defaults(&d);
    ck_assert_int_eq(hp.n_layer, d.n_layer);
    ck_assert(hp.lr_matrix == d.lr_matrix);
}
END_TEST

/* Every file error names the file, the line and (where there is one) the key. */
START_TEST(config_file_errors_name_file_line_and_key) {
    struct {
        const char *text, *expect;
    } cases[] = {
        {"d_model = 128\nn_head = x\n", ":2: n_head: 'x' is not a whole number"},
        {"\n\nwidth = 128\n", ":3: unknown key 'width'"},
        {"d_model 128\n", ":1: expected 'key = value'"},
        {"= 128\n", ":1: the key before '=' is missing"},
        {"d_model =\n", ":1: d_model: the value is missing"},
        {"[modle]\n", ":1: unknown section [modle]"},
        {"[model\n", ":1: the section header has no closing ']'"},
        {"[model] x\n", ":1: unexpected text after the section header"},
        {"out_dir = \"abc\n", ":1: out_dir: the closing quote is missing"},
        {"out_dir = \"abc\" def\n", ":1: out_dir: unexpected text after the closing quote"},
        {"out_dir = \"a\\nb\"\n", ":1: out_dir: unknown escape '\\n'"},
        {"d_model = 128\n# x\nd_model = 256\n", ":3: d_model is already set on line 1"},
        {"router = topk\n", ":1: router: 'topk' is not one of dense, tc, ec, et"},
        {"n_layer = -2\n", ":1: n_layer: -2 is below the minimum 1"},
        {"[model]\nd_model = 100\nn_head = 3\n", "n_head = 3 does not divide d_model = 100"},
    };
    for (size_t i = 0; i < ETM_ARRAY_LEN(cases); i++) {
        etm_hparams hp, before;
        etm_error err = {{0}};
        etm_hparams_defaults(&hp);
        before = hp;
        ck_assert_msg(load_text(&hp, cases[i].text, &err) != 0, "case %zu accepted", i);
        ASSERT_MSG_HAS(err, "test.conf");
        ASSERT_MSG_HAS(err, cases[i].expect);
        /* A failed load leaves the struct untouched. */
        ck_assert_ptr_null(etm_hparams_first_difference(&hp, &before));
    }
    /* A consistency error says on which lines the keys were set. */
    etm_hparams hp;
    etm_error err = {{0}};
    ck_assert_int_ne(load_text(&hp, "[model]\nd_model = 100\nn_head = 3\n", &err), 0);
    ASSERT_MSG_HAS(err, "n_head from ");
    ASSERT_MSG_HAS(err, "test.conf:3");
    ASSERT_MSG_HAS(err, "d_model from ");
    ASSERT_MSG_HAS(err, "test.conf:2");
    /* from_string uses the given name. */
    ck_assert_int_ne(etm_hparams_from_string(&hp, "d_model = 1.5\n", "ckpt.safetensors", &err), 0);
    ASSERT_MSG_HAS(err, "ckpt.safetensors:1: d_model: '1.5' is not a whole number");
}
END_TEST

START_TEST(configure_applies_overrides_after_the_file) {
    etm_hparams hp;
    etm_error err = {{0}};
    char *args[] = {"d_model=768", "n_layer=2", "router=tc", "tc_balance=lossfree"};
    ck_assert_msg(etm_hparams_configure(&hp, "d12", 4, args, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(hp.d_model, 768);
    ck_assert_int_eq(hp.n_layer, 2);
    ck_assert_int_eq(hp.router, ETM_ROUTER_TC);
    ck_assert_int_eq(hp.tc_balance, ETM_BALANCE_LOSSFREE);
    ck_assert_int_eq(hp.vocab_size, 65536); /* from d12.conf */
    /* An override may repair what the file alone would not allow. */
    char path[512];
    write_temp(path, sizeof path, "n_head = 5\nn_kv_head = 5\n");
    char *fix[] = {"d_model=320"};
    ck_assert_msg(etm_hparams_configure(&hp, path, 1, fix, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(hp.d_model, 320);
    /* A bad argument is named; a consistency error says where both keys came from. */
    char *bad[] = {"n_layer=2", "d_model=abc"};
    ck_assert_int_ne(etm_hparams_configure(&hp, "demo", 2, bad, &err), 0);
    ASSERT_MSG_HAS(err, "argument 'd_model=abc': d_model: 'abc' is not a whole number");
    char *clash[] = {"n_head=7"};
    ck_assert_int_ne(etm_hparams_configure(&hp, "demo", 1, clash, &err), 0);
    ASSERT_MSG_HAS(err, "n_head = 7 does not divide d_model = 96");
    ASSERT_MSG_HAS(err, "n_head from argument 'n_head=7'");
    ASSERT_MSG_HAS(err, "d_model from ");
    ASSERT_MSG_HAS(err, "demo.conf:");
    char *typo[] = {"lr_matrx=0.1"};
    ck_assert_int_ne(etm_hparams_configure(&hp, NULL, 1, typo, &err), 0);
    ASSERT_MSG_HAS(err, "unknown key 'lr_matrx' (did you mean 'lr_matrix'?)");
}
END_TEST

START_TEST(help_lists_every_key_with_its_default) {
    char dir[256], path[512];
    test_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/help.txt", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    etm_hparams_print_help(f);
    fclose(f);
    etm_error err = {{0}};
    char *text = etm_read_file(path, NULL, &err);
    ck_assert_ptr_nonnull(text);
    for (int i = 0; i < etm_hparams_n_keys(); i++) {
        char needle[128];
        snprintf(needle, sizeof needle, "  %s ", etm_hparams_key(i));
        ck_assert_msg(strstr(text, needle) != NULL, "help lacks %s", etm_hparams_key(i));
    }
    ck_assert_ptr_nonnull(strstr(text, "dense, tc, ec, et; default et]"));
    free(text);
}
END_TEST

static Suite *hparams_suite(void) {
    Suite *s = suite_create("hparams");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, defaults_are_valid_and_equal_the_demo_preset);
    tcase_add_test(tc, presets_load_with_their_sizes);
    tcase_add_test(tc, print_and_parse_round_trip);
    tcase_add_loop_test(tc, configs_older_than_a_key_keep_its_old_behaviour, 0, (int)ETM_ARRAY_LEN(older_keys));
    tcase_add_test(tc, router_activation_rejects_what_tc_cannot_use);
    tcase_add_test(tc, configs_without_cutoff_scope_read_as_pool);
    tcase_add_test(tc, ec_pool_scope_defaults_reads_and_refusals);
    tcase_add_test(tc, configs_without_expert_scale_or_matrix_decay_read_as_before);
    tcase_add_test(tc, every_key_is_documented);
    tcase_add_test(tc, set_parses_each_type);
    tcase_add_test(tc, floats_read_back_bit_identical);
    tcase_add_test(tc, set_rejects_bad_values);
    tcase_add_test(tc, validate_rejects_inconsistent_settings);
    tcase_add_test(tc, config_files_parse_comments_sections_quotes);
    tcase_add_test(tc, config_file_errors_name_file_line_and_key);
    tcase_add_test(tc, configure_applies_overrides_after_the_file);
    tcase_add_test(tc, help_lists_every_key_with_its_default);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return test_run_suite(hparams_suite()); }
