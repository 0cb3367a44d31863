#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets under tests/fuzz/corpus/<target>/ (run once;
the files are committed, and crashes found later are added beside them as regression inputs).
Seeds are small, valid examples of each input, so the fuzzer starts from the accepted paths."""
import glob
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
        data += bytes((i * 7) & 0xFF for i in range(size))
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    if wire == 5:
        return key + struct.pack("<f", payload)
    raise ValueError(wire)


def request(id="r", prompt_ids=(), max_new=16, temperature=None, top_p=None, top_k=None, seed=None, ignore_eos=False,
            logprobs=0, queue_ms=0, text=None, return_text=False, stop=()):
    b = field(1, 2, id.encode()) if id else b""
    if prompt_ids:
        b += field(2, 2, b"".join(varint(i) for i in prompt_ids))
    if max_new:
        b += field(3, 0, max_new)
    s = b""
    if temperature is not None:
        s += field(1, 5, temperature)
    if top_p is not None:
        s += field(2, 5, top_p)
    if top_k is not None:
        s += field(3, 0, top_k)
    if seed is not None:
        s += field(4, 0, seed)
    if s:
        b += field(4, 2, s)
    if ignore_eos:
        b += field(5, 0, 1)
    if logprobs:
        b += field(6, 0, logprobs)
    if queue_ms:
        b += field(7, 0, queue_ms)
    if text is not None:
        b += field(8, 2, text.encode())
    if return_text:
        b += field(9, 0, 1)
    for x in stop:
        b += field(10, 2, x.encode())
    return b


def byte_level_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer(merges, split=True, post=True, added=True):
    chars = byte_level_chars()
    vocab = {chars[b]: b for b in range(256)}
    merge_list = []
    for a, b in merges:
        merge_list.append(f"{a} {b}")
        vocab.setdefault(a + b, len(vocab))
    added_tokens = []
    if added:
        for t in ["<s>", "</s>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]:
            added_tokens.append({"id": len(vocab) + len(added_tokens), "content": t, "special": True})
    pre = [{"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]
    if split:
        pre.insert(0, {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False})
    j = {"version": "1.0", "added_tokens": added_tokens, "normalizer": None,
         "pre_tokenizer": {"type": "Sequence", "pretokenizers": pre},
         "decoder": {"type": "ByteLevel"},
         "model": {"type": "BPE", "vocab": vocab, "merges": merge_list}}
    if post and added:
        j["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                                         {"Sequence": {"id": "A", "type_id": 0}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [vocab_size(vocab)]}}}
    return json.dumps(j, ensure_ascii=False)


def vocab_size(vocab):
    return len(vocab)


def main():
    # safetensors files
    put("safetensors_fuzz", "f32", safetensors({"a": ("F32", [2, 3], 24)}))
    put("safetensors_fuzz", "mixed", safetensors({"w": ("BF16", [4, 4], 32), "s": ("F32", [1], 4),
                                                  "q": ("F8_E4M3", [2, 8], 16)}, {"format": "pt"}))
    put("safetensors_fuzz", "scalar_and_empty", safetensors({"x": ("F32", [], 4), "e": ("BF16", [0, 5], 0)}))
    put("safetensors_fuzz", "empty_header", safetensors({}))
    # index files
    put("safetensors_index_fuzz", "two_shards", json.dumps({"metadata": {"total_size": 100}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    put("safetensors_index_fuzz", "one", json.dumps({"weight_map": {"lm_head.weight": "model.safetensors"}}))
    # config.json: every preset
    for path in sorted(glob.glob(os.path.join(ROOT, "cluster-configs", "models", "*", "config.json"))):
        put("model_config_fuzz", os.path.basename(os.path.dirname(path)), open(path, "rb").read())
    # cluster and hardware YAML: every preset, and one with inline hardware
    for path in sorted(glob.glob(os.path.join(ROOT, "cluster-configs", "*", "*.yaml"))):
        put("cluster_config_fuzz", os.path.basename(os.path.dirname(path)) + "-" + os.path.basename(path),
            open(path, "rb").read())
    hw = open(os.path.join(ROOT, "cluster-configs", "hardware", "h800.yaml")).read()
    inline = "name: inline\nnodes: 2\ndevices_per_node: 8\nhardware:\n" + "".join(
        "  " + l + "\n" for l in hw.splitlines() if l.strip() and not l.startswith("#"))
    put("cluster_config_fuzz", "inline-hardware.yaml", inline +
        "deployment:\n  phase: decode\n  ep: 16\n  batch_per_gpu: 64\n  avg_context: 4096\n  cache_hit_rate: 0.5\n"
        "published:\n  metric: output_tokens_per_s_per_node\n  value: 1000\n  source: nowhere\n")
    # tokenizers, each followed by NUL and text to encode
    texts = ["Hello, world 12345!", "<｜User｜>héllo<｜Assistant｜> 日本語 🙂", "a\u0301 \t\n  x"]
    merges = [("H", "e"), ("He", "l"), ("l", "o"), ("Ġ", "w"), ("1", "2")]
    for i, (tok, text) in enumerate([(tokenizer(merges), texts[0]), (tokenizer(merges, split=False), texts[1]),
                                     (tokenizer([], post=False), texts[2]), (tokenizer(merges, added=False), texts[0])]):
        put("tokenizer_fuzz", f"bpe{i}", tok.encode() + b"\0" + text.encode())
    # GenerateRequest messages
    put("generate_request_fuzz", "ids", request(prompt_ids=[1, 2, 3], max_new=8))
    put("generate_request_fuzz", "sampled", request(prompt_ids=[5, 6, 7, 8], max_new=32, temperature=0.8, top_p=0.9,
                                                    top_k=50, seed=7, logprobs=3, queue_ms=500))
    put("generate_request_fuzz", "text", request(text="Hello wörld", max_new=4, return_text=True, stop=[".", "\n"]))
    put("generate_request_fuzz", "chat_tokens", request(text="<｜User｜>hi<｜Assistant｜>", max_new=4, ignore_eos=True))
    put("generate_request_fuzz", "invalid", request(prompt_ids=[1, 600], max_new=-1, temperature=-1.0))
    # OpenAI bodies
    for name, body in [
        ("completion", {"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}),
        ("completion_ids", {"prompt": [1, 2, 3], "max_tokens": 4, "logprobs": 2, "stop": ["\n", "."], "seed": 3}),
        ("chat", {"model": "daedalus", "messages": [{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Hi"}],
                  "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 16, "top_p": 0.9}),
        ("chat_parts", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]},
                                     {"role": "assistant", "content": "b"}, {"role": "developer", "content": "c"}],
                        "logprobs": True, "top_logprobs": 2, "max_completion_tokens": 5}),
        ("bad", {"prompt": "x", "temperature": 3, "n": 2, "model": 7}),
    ]:
        put("openai_request_fuzz", name, json.dumps(body, ensure_ascii=False))


if __name__ == "__main__":
    main()
