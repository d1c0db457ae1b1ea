// tokenize: text <-> token ids with a Hugging Face tokenizer; chat samples -> ids and labels.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/chat.h"
#include "../common/cli.h"
#include "../common/tokenizer.h"
#include "../common/util.h"

int main(int argc, char **argv) {
    char *dir = NULL, *policy = "auto";
    int decode = 0, chat = 0, skip_special = 0;
    int64_t min_pixels = 3136, max_pixels = 2560000;
    const Opt opts[] = {
        {"tokenizer", OPT_STR, &dir, "DIR", "Directory with tokenizer.json (and tokenizer_config.json)."},
        {"decode", OPT_FLAG, &decode, NULL, "Read {\"ids\": [...]} lines and write {\"text\": ...} lines."},
        {"skip-special", OPT_FLAG, &skip_special, NULL, "With --decode: leave special tokens out of the text."},
        {"chat", OPT_FLAG, &chat, NULL,
         "Read one sample per line (\"conversations\" or \"messages\", optional \"system\", \"image_sizes\": [[h, w], ...]) "
         "and write {\"ids\": [...], \"labels\": [...]} with -100 where there is no loss."},
        {"policy", OPT_STR, &policy, "auto|caption|vqa|multiturn",
         "With --chat: which tokens are supervised. caption: the caption and <|im_end|>, no chat wrapping; vqa: the "
         "last answer and its <|im_end|>; multiturn: every assistant turn and its <|im_end|>; auto: a sample's own "
         "\"policy\" field, else multiturn."},
        {"min-pixels", OPT_INT, &min_pixels, "N", "With --chat: smart_resize lower bound on H'xW'."},
        {"max-pixels", OPT_INT, &max_pixels, "N", "With --chat: smart_resize upper bound on H'xW'."},
    };
    const Cli cli = {
        .name = "tokenize",
        .summary = "token ids from text, text from token ids, and chat samples to ids and labels",
        .synopsis = "tokenize --tokenizer DIR [--decode | --chat] < IN > OUT",
        .description =
            "Reads standard input line by line. By default each line is text (or a JSON object {\"text\": ...}) and "
            "the output line is {\"ids\": [...]}: the Qwen2/Qwen3 byte-level BPE of tokenizer.json with added "
            "tokens matched first and never split, NFC normalisation, the pre-tokenizer regex written in the file, "
            "and no BOS. A plain text line is taken without its newline; use the JSON form to encode newlines.\n"
            "With --decode the inverse: {\"ids\": [...]} -> {\"text\": ...}.\n"
            "With --chat each line is a conversation rendered with the LLaVA-OV-1.5 training template (ChatML, "
            "default system prompt \"You are a helpful assistant.\"), each <image> placeholder becoming "
            "<|vision_start|>, N x <|image_pad|>, <|vision_end|> with N = H'W'/784 from the image's smart-resized size.",
        .opts = opts,
        .nopts = sizeof opts / sizeof opts[0],
        .examples = "echo 'Hello world' | tokenize --tokenizer stage0\n"
                    "echo '{\"conversations\": [{\"from\": \"human\", \"value\": \"<image>\\nWhat is it?\"}, "
                    "{\"from\": \"gpt\", \"value\": \"A cat.\"}], \"image_sizes\": [[400, 600]]}' | tokenize --tokenizer stage0 --chat",
    };
    char **pos;
    cli_parse(&cli, argc, argv, &pos);
    free(pos);
    cli_require(&cli, "tokenizer", dir);
    if (decode && chat) die_input("--decode and --chat exclude each other");
    ChatPolicy pol = chat_policy_from_name(policy);
    if (pol == CHAT_INVALID) die_input("--policy: expected auto, caption, vqa or multiturn, got '%s'", policy);
    Err e;
    Tokenizer *t = tok_load(dir, &e);
    if (!t) die_input("%s", e.msg);
    ChatOptions co = {.policy = pol, .min_pixels = min_pixels, .max_pixels = max_pixels};
    int rc = tokenize_stream(t, stdin, stdout, decode ? TS_DECODE : chat ? TS_CHAT : TS_ENCODE, skip_special, &co);
    tok_free(t);
    return rc;
}
