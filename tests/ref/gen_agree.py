#!/usr/bin/python3
"""Whether two greedy continuations (`forward --generate` outputs) agree as far as precision allows: token for
token until the first difference, which is allowed only where one side's choice was a near tie -- its
generated_margin (chosen logit minus the runner-up, over the RMS of the logits) at most TAU (default 4e-2: twice
the bf16 logits tolerance of relative L2 2e-2, since both the winner and the runner-up may move). After a
difference the contexts differ and nothing further is compared.
usage: gen_agree.py REF.safetensors OTHER.safetensors [TAU]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stlib import read_file  # noqa: E402

a, b = read_file(sys.argv[1]), read_file(sys.argv[2])
tau = float(sys.argv[3]) if len(sys.argv) > 3 else 4e-2
ta, tb = a["generated"][1].tolist(), b["generated"][1].tolist()
ma, mb = a["generated_margin"][1].tolist(), b["generated_margin"][1].tolist()
print(f"gen_agree: ref   {ta}")
print(f"gen_agree: other {tb}")
n = min(len(ta), len(tb))
first = next((i for i in range(n) if ta[i] != tb[i]), None)
if first is None:
    ok = len(ta) == len(tb) and n > 0
    print(f"gen_agree: {'identical' if ok else 'lengths differ'} ({n} tokens)")
    sys.exit(0 if ok else 1)
near = min(ma[first], mb[first])
ok = near <= tau
print(f"gen_agree: identical for {first} tokens, then differ at a choice with margin {ma[first]:.4f} / {mb[first]:.4f} "
      f"({'a near tie' if ok else 'NOT a near tie'}: tolerance {tau})")
sys.exit(0 if ok else 1)
