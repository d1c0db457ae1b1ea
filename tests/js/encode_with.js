// Encodes JSON lines {"text"} with the tokenizer files in DIR through the reference implementation
// (@lenml/tokenizers, transformers.js), writing {"ids"} lines: checks a tokenizer we wrote ourselves.
//   node encode_with.js DIR < texts.jsonl > ids.jsonl
const fs = require("fs");
const path = require("path");
const { TokenizerLoader } = require("@lenml/tokenizers");
const dir = process.argv[2];
const t = TokenizerLoader.fromPreTrained({
  tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"))),
  tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"))),
});
for (const line of fs.readFileSync(0, "utf8").split("\n").filter((l) => l.length))
  console.log(JSON.stringify({ ids: t.encode(JSON.parse(line).text, { add_special_tokens: false }) }));
