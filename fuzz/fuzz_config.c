/* fuzz/fuzz_config.c: the configuration parser on arbitrary text. Whatever parses must print to
 * a text that parses to the identical settings (print -> parse -> print is a fixed point). */
#include <config.h>

#include "fuzz.h"
#include "hparams.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    etm_hparams hp, back;
    etm_error err = {{0}};
    int rc = etm_hparams_from_string(&hp, text, "fuzz.conf", &err);
    free(text);
    if (rc != 0) {
        if (!err.msg[0]) fuzz_fail("a refused config without a message");
        return 0;
    }
    char *printed = etm_hparams_to_string(&hp);
    if (etm_hparams_from_string(&back, printed, "printed", &err) != 0)
        fuzz_fail("the printed settings do not parse: %s\n%s", err.msg, printed);
    char *again = etm_hparams_to_string(&back);
    if (strcmp(printed, again) != 0) fuzz_fail("print -> parse -> print differs:\n%s\n---\n%s", printed, again);
    const char *key = etm_hparams_first_difference(&hp, &back);
    if (key) fuzz_fail("key %s differs after print -> parse", key);
    free(printed);
    free(again);
    return 0;
}
