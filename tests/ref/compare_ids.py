#!/usr/bin/python3
"""usage: compare_ids.py REF.jsonl OURS.jsonl [DECODED.jsonl]

REF lines: {"ids": [...], "nfc": "..."} from the reference tokenizer (tests/js/corpus.js);
OURS lines: {"ids": [...]} from `tokenize`; DECODED lines: {"text": ...} from `tokenize --decode`
of OURS. Every id list must match, and every decoded text must equal NFC(text)."""
import json
import sys

ref = [json.loads(l) for l in open(sys.argv[1])]
ours = [json.loads(l)["ids"] for l in open(sys.argv[2])]
if len(ref) != len(ours):
    sys.exit(f"compare_ids: {len(ours)} lines, reference has {len(ref)}")
bad = [i for i, (r, o) in enumerate(zip(ref, ours)) if r["ids"] != o]
for i in bad[:5]:
    print(f"line {i + 1}: ours {ours[i][:20]} reference {ref[i]['ids'][:20]}")
nd = 0
if len(sys.argv) > 3:
    dec = [json.loads(l)["text"] for l in open(sys.argv[3])]
    badd = [i for i, (r, d) in enumerate(zip(ref, dec)) if r["nfc"] != d]
    for i in badd[:5]:
        print(f"line {i + 1}: decode {dec[i][:60]!r} != NFC {ref[i]['nfc'][:60]!r}")
    nd = len(badd)
print(f"compare_ids: {len(ref)} strings, {len(bad)} id mismatches, {nd} decode mismatches")
sys.exit(1 if bad or nd else 0)
