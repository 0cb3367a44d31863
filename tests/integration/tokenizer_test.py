"""Tokenizer parity with Hugging Face `tokenizers`: the tokenizers make-model writes (tiny:
512 tokens, small: 32,000) encode a varied corpus and decode token sequences — invalid UTF-8
included — exactly as `tokenizers` does, through `daedalus tokenize`."""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

try:
    from tokenizers import Tokenizer
except ImportError as e:
    print(f"skipped: Hugging Face tokenizers is not installed ({e}); scripts/test-venv.sh installs it")
    sys.exit(77)

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n\r\nand   runs    of     spaces\n\n\n",
    "\n",
    " ",
    "",
    "1234567890123456789 and 3.14159, -42, 1e-9, 0xDEADBEEF",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(12))\n",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; return v[0]; }",
    '{"key": [1, 2, {"nested": "value"}], "flag": true}',
    "深度求索发布了新的混合专家模型，每个词元只激活一小部分专家。",
    "東京は日本の首都です。カタカナとひらがな。",
    "한국어 문장도 있습니다.",
    "Ελληνικά και русский язык и العربية",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "café naïve résumé Straße e\u0301 (combining accent)",
    "Mixed: English中文日本語123abc!!!???...",
    "<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜>",
    "special inside<｜begin▁of▁sentence｜>words",
    "<｜place▁holder▁no▁7｜> placeholder",
    "don't won't I'm you're we've they'll she'd",
    "URLs: https://example.com/path?query=1&b=2#frag",
    "math: ∑_{i=1}^{n} x_i ≤ ∫ f(x) dx → ∞",
    "\u00a0non-breaking\u2003em space\u3000ideographic space",
    "zero\u200bwidth",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!!!!!!!!!!!!!!!????????",
]


def ours(d, model, text):
    p = subprocess.run([d, "tokenize", "--model", model], input=text.encode(), capture_output=True)
    if p.returncode != 0:
        return "error: " + p.stderr.decode()
    return json.loads(p.stdout)


def ours_decode(d, model, ids):
    p = subprocess.run([d, "tokenize", "--model", model, "--decode"], input=json.dumps(ids).encode(), capture_output=True)
    return p.stdout.decode("utf-8") if p.returncode == 0 else "error: " + p.stderr.decode()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = parser.parse_args().daedalus
    failures = 0
    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in ["tiny", "small"]:
            model = os.path.join(tmp, preset)
            subprocess.run([d, "make-model", "--preset", preset, "--config-only", "--out", model], check=True, capture_output=True)
            hf = Tokenizer.from_file(os.path.join(model, "tokenizer.json"))
            bad = [t for t in CORPUS if ours(d, model, t) != hf.encode(t).ids]
            for t in bad[:3]:
                print(f"  {preset} encode {t!r}: ours {ours(d, model, t)} hf {hf.encode(t).ids}")
            print(("ok   " if not bad else "FAIL ") + f"{preset}: encode equals tokenizers on {len(CORPUS)} texts")
            failures += bool(bad)
            # Decoding: sequences of single byte tokens (ids 5..260 are the 256 bytes), real
            # words and specials; random bytes make invalid UTF-8, which both replace with U+FFFD.
            vocab = hf.get_vocab_size()
            cases = [[5 + b for b in "héllo wörld".encode()], [5 + 0xE4, 5 + 0xBD], [5 + 0xFF, 5 + ord("a")],
                     [5 + 0xF0, 5 + 0x9F, 5 + 0x99], [0, 3, 5 + ord("x"), 4, 1]]
            cases += [[rng.randrange(vocab) for _ in range(rng.randrange(1, 30))] for _ in range(40)]
            cases += [[5 + rng.randrange(256) for _ in range(rng.randrange(1, 12))] for _ in range(40)]
            bad = [ids for ids in cases if ours_decode(d, model, ids) != hf.decode(ids, skip_special_tokens=True)]
            for ids in bad[:3]:
                print(f"  {preset} decode {ids}: ours {ours_decode(d, model, ids)!r} hf {hf.decode(ids)!r}")
            print(("ok   " if not bad else "FAIL ") + f"{preset}: decode equals tokenizers on {len(cases)} id sequences")
            failures += bool(bad)
            # Round trip through text.
            ids = ours(d, model, CORPUS[11])
            print(("ok   " if ours_decode(d, model, ids) == CORPUS[11] else "FAIL ") + f"{preset}: decode(encode(text)) is the text")
        # Invalid UTF-8 input is refused with a clear error.
        p = subprocess.run([d, "tokenize", "--model", os.path.join(tmp, "tiny")], input=b"ok \xff\xfe bad", capture_output=True)
        ok = p.returncode != 0 and b"not valid UTF-8 (byte 3)" in p.stderr
        print(("ok   " if ok else "FAIL ") + "invalid UTF-8 on standard input: a clear error")
        failures += not ok
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
