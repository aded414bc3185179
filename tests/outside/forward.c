/* forward.c: a program outside etmoe's tree that uses only the installed libetmoe: built by
 * tests/test_install.sh against `make install DESTDIR=...` with `pkg-config --cflags --libs etmoe`.
 * It calls one backend operation (gemm) and checks it against a loop; builds a tiny model, saves it,
 * loads the checkpoint back, runs forward and backward passes on both and requires identical
 * logits, losses and gradient norms; then writes the dump file of that step. Prints what it did; exit 0 when all is right. */
#include <etmoe.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *what, const etmoe_error *err) {
    fprintf(stderr, "forward: %s: %s\n", what, err ? err->message : "wrong result");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: forward WORKDIR\n");
        return 2;
    }
    const char *dir = argv[1];
    etmoe_error err = {{0}};
    printf("libetmoe %s, %d backend operations (%s ... %s)\n", etmoe_version(),
           etmoe_backend_op_count(), etmoe_backend_op_name(0),
           etmoe_backend_op_name(etmoe_backend_op_count() - 1));

    /* one op through the backend's table: C(2,3) = A(2,4) B(4,3) */
    etmoe_backend *be = etmoe_backend_create("cpu", &err);
    if (!be) return die("backend", &err);
    float A[8], B[12], C[6] = {0}, want[6];
    for (int i = 0; i < 8; i++) A[i] = (float)(i % 5) - 1.5f;
    for (int i = 0; i < 12; i++) B[i] = 0.25f * (float)(i % 7);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) {
            float s = 0.0f;
            for (int k = 0; k < 4; k++) s += A[i * 4 + k] * B[k * 3 + j];
            want[i * 3 + j] = s;
        }
    if (etmoe_backend_gemm(be, 0, 0, 2, 3, 4, 1.0f, A, 4, B, 3, 0.0f, C, 3, &err) != 0)
        return die("gemm", &err);
    for (int i = 0; i < 6; i++)
        if (fabsf(C[i] - want[i]) > 1e-5f) return die("gemm differs from the loop", NULL);
    printf("%s gemm 2x3x4: ok\n", etmoe_backend_name(be));

    /* a tiny ET-MoE model, saved and loaded back */
    const char *settings[] = {"vocab_size=64", "seq_len=16", "n_layer=2", "d_model=32", "n_head=2",
                              "n_kv_head=1", "ffn_hidden=64", "router=et", "dense_layers=1",
                              "n_routed=4", "n_shared=1", "expert_hidden=32", "top_k=1",
                              "batch_size=2", "seed=7"};
    etmoe_model *made = etmoe_model_create(NULL, settings, sizeof settings / sizeof *settings, be, 0, &err);
    if (!made) return die("model", &err);
    char path[4096];
    snprintf(path, sizeof path, "%s/tiny.safetensors", dir);
    if (etmoe_model_save(made, path, &err) != 0) return die("save", &err);
    etmoe_model *m = etmoe_model_load(path, be, 0, &err);
    if (!m) return die("load", &err);

    const int Bn = etmoe_model_max_batch(m), T = etmoe_model_seq_len(m), V = etmoe_model_vocab_size(m);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)Bn * T), *tgt = malloc(sizeof(int32_t) * (size_t)Bn * T);
    for (int i = 0; i < Bn * T; i++) {
        tok[i] = (int32_t)((i * 7 + 3) % V);
        tgt[i] = (int32_t)((i * 7 + 10) % V);
    }
    double loss = 0.0, loss_made = 0.0, gnorm = 0.0;
    if (etmoe_model_forward(m, tok, tgt, Bn, T, ETMOE_EVAL, &loss, &err) != 0) return die("forward", &err);
    if (etmoe_model_forward(made, tok, tgt, Bn, T, ETMOE_EVAL, &loss_made, &err) != 0)
        return die("forward", &err);
    float *la = malloc(sizeof(float) * (size_t)Bn * T * V), *lb = malloc(sizeof(float) * (size_t)Bn * T * V);
    if (etmoe_model_logits(m, la, 0, Bn * T, &err) != 0 || etmoe_model_logits(made, lb, 0, Bn * T, &err) != 0)
        return die("logits", &err);
    if (memcmp(la, lb, sizeof(float) * (size_t)Bn * T * V) != 0 || loss != loss_made)
        return die("the loaded checkpoint's forward differs from the saved model's", NULL);
    if (!(loss > 0.0) || !isfinite(loss)) return die("loss is not a positive number", NULL);
    printf("forward: %zu parameters, batch %d x %d, loss %.6f (ln V = %.6f), logits identical after "
           "save and load\n", etmoe_model_num_params(m), Bn, T, loss, log((double)V));

    /* The output head starts at zero (so the loss is ln V): the gradients, which reach every
     * parameter, are what shows that the checkpoint holds the same model. */
    double loss_b = 0.0, gnorm_made = 0.0;
    if (etmoe_model_forward(m, tok, tgt, Bn, T, ETMOE_TRAIN, &loss, &err) != 0) return die("forward", &err);
    if (etmoe_model_backward(m, &gnorm, &err) != 0) return die("backward", &err);
    if (etmoe_model_forward(made, tok, tgt, Bn, T, ETMOE_TRAIN, &loss_b, &err) != 0) return die("forward", &err);
    if (etmoe_model_backward(made, &gnorm_made, &err) != 0) return die("backward", &err);
    if (!(gnorm > 0.0) || !isfinite(gnorm)) return die("gradient norm is not a positive number", NULL);
    if (gnorm != gnorm_made || loss != loss_b)
        return die("the loaded checkpoint's gradients differ from the saved model's", NULL);
    printf("backward: training-mode loss %.6f, gradient norm %.6f, identical after save and load\n",
           loss, gnorm);
    snprintf(path, sizeof path, "%s/step.dump.safetensors", dir);
    if (etmoe_model_dump(m, tok, tgt, Bn, "tiny.safetensors", path, &loss, &err) != 0)
        return die("dump", &err);
    printf("dump: wrote %s (loss %.6f)\n", path, loss);

    /* errors come back as messages, not exits */
    if (etmoe_model_load("/nonexistent/x.safetensors", be, 0, &err) != NULL || !err.message[0])
        return die("loading a missing file did not fail with a message", NULL);
    printf("missing checkpoint: %s\n", err.message);

    free(tok);
    free(tgt);
    free(la);
    free(lb);
    etmoe_model_free(m);
    etmoe_model_free(made);
    etmoe_backend_free(be);
    return 0;
}
