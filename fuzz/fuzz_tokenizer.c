/* fuzz/fuzz_tokenizer.c: the BPE tokenizer and its merges parser on arbitrary bytes. The first
 * byte picks the target:
 *   even: the text after it is encoded with the shipped austen tokenizer; decoding the ids must
 *         give the same bytes back (every byte string, <|endoftext|> included);
 *   odd:  the rest is a merges file; when it parses, formatting and parsing again must give the
 *         same merges, and the tokenizer built from it must round-trip a fixed text. */
#include <config.h>

#include "fuzz.h"
#include "tokenizer.h"
#include "tokenizer_merges.h"

#include <string.h>

static etm_tokenizer *austen;

static void round_trip(const etm_tokenizer *tok, const char *text, size_t len) {
    size_t n = 0, back_len = 0;
    int32_t *ids = etm_tokenizer_encode(tok, text, len, &n);
    etm_error err = {{0}};
    char *back = etm_tokenizer_decode(tok, ids, n, &back_len, &err);
    if (!back) fuzz_fail("decoding its own ids failed: %s", err.msg);
    if (back_len != len || memcmp(back, text, len) != 0)
        fuzz_fail("encode -> decode changed %zu bytes into %zu", len, back_len);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= etm_tokenizer_vocab_size(tok)) fuzz_fail("id %d outside the vocabulary", (int)ids[i]);
    free(ids);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    etm_error err = {{0}};
    if (data[0] % 2 == 0) {
        if (!austen && !(austen = etm_tokenizer_load("austen", &err))) fuzz_fail("cannot load austen: %s", err.msg);
        round_trip(austen, text, len);
        return 0;
    }
    etm_merges m, again;
    if (etm_merges_parse(text, len, "fuzz.bpe", &m, &err) != 0) {
        if (!err.msg[0]) fuzz_fail("refused merges without a message");
        return 0;
    }
    size_t flen = 0, flen2 = 0;
    char *formatted = etm_merges_format(&m, &flen);
    if (etm_merges_parse(formatted, flen, "formatted", &again, &err) != 0)
        fuzz_fail("formatted merges do not parse: %s", err.msg);
    char *formatted2 = etm_merges_format(&again, &flen2);
    if (flen != flen2 || memcmp(formatted, formatted2, flen) != 0) fuzz_fail("merges: format -> parse -> format differs");
    etm_merges_free(&m);
    etm_merges_free(&again);
    free(formatted2);
    etm_tokenizer *tok = etm_tokenizer_from_merges(formatted, flen, "formatted", &err);
    free(formatted);
    if (!tok) return 0; /* a parseable file can still be refused as a tokenizer (e.g. a merge of unknown tokens) */
    static const char sample[] = "It is a truth universally acknowledged<|endoftext|> \xff\xfe caf\xc3\xa9 123 ";
    round_trip(tok, sample, sizeof sample - 1);
    etm_tokenizer_free(tok);
    return 0;
}
