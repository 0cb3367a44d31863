"""The OpenAI-compatible HTTP API driven by the official `openai` Python client against
`serve --workers 2` on the tiny preset: models, completions and chat, streaming and not, stop
strings, usage, logprobs, an invalid request and a missing bearer token; and text through the
cluster equals `daedalus run` on the same token ids, decoded by the tokenizer."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from harness import ENV, check, dump_logs, failures, finish, stop

try:
    import openai
    try:  # the HTTP library under the client: httpx2 in recent releases, httpx before
        import httpx2 as httpx
        DefaultClient = openai.DefaultHttpx2Client
    except ImportError:
        import httpx
        DefaultClient = openai.DefaultHttpxClient
except ImportError as e:
    print(f"skipped: the openai client is not installed ({e}); scripts/test-venv.sh installs it")
    sys.exit(77)

TOKEN = "sk-test"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daedalus", required=True)
    d = parser.parse_args().daedalus
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "tiny")
        subprocess.run([d, "make-model", "--preset", "tiny", "--out", model], check=True, capture_output=True)

        def tokenize(text, *flags):
            return json.loads(subprocess.run([d, "tokenize", "--model", model, *flags], input=text.encode(),
                                             capture_output=True, check=True).stdout)

        def decode(ids):
            return subprocess.run([d, "tokenize", "--model", model, "--decode"], input=json.dumps(ids).encode(),
                                  capture_output=True, check=True).stdout.decode()

        def run_text(ids, n):
            p = subprocess.run([d, "run", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", str(n)],
                               capture_output=True, text=True, env=ENV, check=True)
            return decode(json.loads(p.stdout)["generated_ids"])

        err = open(os.path.join(tmp, "serve.err"), "w+")
        serve = subprocess.Popen([d, "serve", "--model", model, "--workers", "2", "--listen", "127.0.0.1:0",
                                  "--http", "127.0.0.1:0", "--auth-token", TOKEN], stdout=subprocess.PIPE, stderr=err,
                                 text=True, env=ENV)
        try:
            grpc_address = serve.stdout.readline().split()[1]
            err.seek(0)
            http = re.search(r"API at (http://\S+/v1)", err.read()).group(1)
            transport = DefaultClient(trust_env=False)  # loopback only, whatever proxy the environment names
            client = openai.OpenAI(base_url=http, api_key=TOKEN, http_client=transport, max_retries=0)

            ids = [m.id for m in client.models.list().data]
            check(ids == ["tiny"], "GET /v1/models lists the served model", ids)

            prompt = "The quick brown fox"
            expected = run_text(tokenize(prompt), 12)
            c = client.completions.create(model="daedalus", prompt=prompt, max_tokens=12, temperature=0)
            check(c.choices[0].text == expected, "completion text equals `run` on the tokenized prompt, decoded",
                  (c.choices[0].text, expected))
            check(c.usage.prompt_tokens == len(tokenize(prompt)) and c.usage.completion_tokens <= 12 and
                  c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, "completion usage", c.usage)

            chunks = list(client.completions.create(model="daedalus", prompt=prompt, max_tokens=12, temperature=0, stream=True,
                                                    stream_options={"include_usage": True}))
            streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
            reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
            check(streamed == expected and reasons == [c.choices[0].finish_reason], "streamed completion: same text, one finish_reason",
                  (streamed, reasons))
            check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == c.usage.completion_tokens,
                  "stream_options.include_usage: usage in the last chunk")

            grpc = subprocess.run([d, "generate", "--server", grpc_address, "--auth-token", TOKEN, "--prompt", prompt,
                                   "--max-new-tokens", "12", "--json"], capture_output=True, text=True, env=ENV)
            check(grpc.returncode == 0 and json.loads(grpc.stdout)["text"] == expected, "gRPC Generate with prompt_text streams the same text",
                  grpc.stdout + grpc.stderr)

            # Stop strings: cut before the first occurrence; the sequence ends early.
            long = client.completions.create(model="daedalus", prompt=prompt, max_tokens=24, temperature=0).choices[0].text
            stop_string = long[6:8]
            cut = client.completions.create(model="daedalus", prompt=prompt, max_tokens=24, temperature=0, stop=[stop_string])
            check(cut.choices[0].text == long[:long.index(stop_string)] and cut.choices[0].finish_reason == "stop",
                  f"stop string {stop_string!r}: text up to it, finish_reason stop", (cut.choices[0].text, long))

            # Chat, with DeepSeek-V3's format.
            messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
            chat = client.chat.completions.create(model="daedalus", messages=messages, max_tokens=10, temperature=0,
                                                  logprobs=True, top_logprobs=3)
            chat_ids = [0] + tokenize("Be brief.<｜User｜>Hello<｜Assistant｜>", "--no-special-tokens")
            check(chat.choices[0].message.content == run_text(chat_ids, 10) and chat.usage.prompt_tokens == len(chat_ids),
                  "chat completion: DeepSeek-V3 chat format, text equals `run` on those ids")
            lp = chat.choices[0].logprobs.content
            check(len(lp) == chat.usage.completion_tokens and all(len(t.top_logprobs) == 3 and
                  t.top_logprobs[0].logprob >= t.logprob - 1e-5 for t in lp), "chat logprobs with top 3")
            stream = client.chat.completions.create(model="daedalus", messages=messages, max_tokens=10, temperature=0, stream=True)
            parts = list(stream)
            text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
            check(parts[0].choices[0].delta.role == "assistant" and text == chat.choices[0].message.content,
                  "streamed chat: role first, then the same content")
            # Completions' text_offset counts from the start of the whole text, streamed or not.
            offsets = []
            for streamed in (False, True):
                got = client.completions.create(model="daedalus", prompt=prompt, max_tokens=6, temperature=0,
                                                logprobs=2, stream=streamed)
                chunks = [c for c in got if c.choices and c.choices[0].logprobs] if streamed else [got]
                offsets.append([o for c in chunks for o in c.choices[0].logprobs.text_offset])
                tokens = [t for c in chunks for t in c.choices[0].logprobs.tokens]
                check(offsets[-1] == [sum(len(t.encode()) for t in tokens[:i]) for i in range(len(tokens))],
                      f"text_offset runs over the whole text ({'streamed' if streamed else 'whole'})", offsets[-1])
            check(offsets[0] == offsets[1], "the same text_offset streamed and whole", offsets)

            # Errors in OpenAI's shape.
            try:
                client.completions.create(model="daedalus", prompt=prompt, max_tokens=4, temperature=5)
                check(False, "temperature 5 is refused")
            except openai.BadRequestError as e:
                check(e.status_code == 400 and e.body["param"] == "temperature" and "temperature" in e.body["message"],
                      "invalid request: 400 with the field named", e.body)
            # A content part whose "type" is not a string: a 400 naming the rule (it had been a 500).
            r = transport.post(f"{http}/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"},
                               json={"model": "daedalus", "messages": [{"role": "user",
                                                                          "content": [{"type": 5, "text": "hi"}]}]})
            check(r.status_code == 400 and "content parts" in r.json()["error"]["message"],
                  "a content part with a numeric type: 400", r.text)
            try:
                client.completions.create(model="nonexistent", prompt=prompt, max_tokens=4)
                check(False, "an unknown model is refused")
            except openai.NotFoundError as e:
                check(e.status_code == 404, "unknown model: 404")
            anonymous = openai.OpenAI(base_url=http, api_key="wrong", http_client=transport, max_retries=0)
            try:
                anonymous.completions.create(model="daedalus", prompt=prompt, max_tokens=4)
                check(False, "a wrong bearer token is refused")
            except openai.AuthenticationError as e:
                check(e.status_code == 401, "wrong bearer token: 401")
            r = transport.post(f"{http}/completions", json={"model": "daedalus", "prompt": prompt})
            check(r.status_code == 401 and "error" in r.json(), "missing bearer token: 401 with an error body", r.text)
            r = transport.get(http.replace("/v1", "/health"))
            check(r.status_code == 200, "/health beside the API")
            c = client.completions.create(model="daedalus", prompt=prompt, max_tokens=12, temperature=0)
            check(c.choices[0].text == expected, "the API serves the next request")

            # Prefix caching: a prompt of several 64-token pages, asked twice, reads its whole
            # pages from the cache the second time (on the worker the first one ran on), with
            # the same text; gRPC reports the same count.
            long_ids = [(i * 7 + 3) % 500 + 2 for i in range(200)]
            first = client.completions.create(model="daedalus", prompt=long_ids, max_tokens=8, temperature=0)
            again = client.completions.create(model="daedalus", prompt=long_ids, max_tokens=8, temperature=0)
            cached = lambda c: c.usage.prompt_tokens_details.cached_tokens if c.usage.prompt_tokens_details else None
            check(cached(first) == 0 and cached(again) == 192, "usage.prompt_tokens_details.cached_tokens: 0, then 3 whole pages",
                  (cached(first), cached(again)))
            check(again.choices[0].text == first.choices[0].text == run_text(long_ids, 8),
                  "the cached prefix changes no token")
            grpc = subprocess.run([d, "generate", "--server", grpc_address, "--auth-token", TOKEN, "--prompt-ids",
                                   ",".join(map(str, long_ids + [9])), "--max-new-tokens", "4", "--json"],
                                  capture_output=True, text=True, env=ENV)
            usage = json.loads(grpc.stdout)["usage"] if grpc.returncode == 0 else {}
            check(usage.get("cached_tokens") == 192, "gRPC usage.cached_tokens", grpc.stdout + grpc.stderr)
            status = json.loads(subprocess.run([d, "status", "--server", grpc_address, "--auth-token", TOKEN, "--json"],
                                               capture_output=True, text=True, env=ENV).stdout)
            holder = [w for w in status["workers"] if int(w["prompt_tokens_cached"]) == 384]
            check(len(holder) == 1 and int(holder[0]["prefix_routed"]) >= 2 and int(holder[0]["cached_pages"]) >= 3,
                  "status: the worker holding the prefix served both hits, routed there by prefix", status["workers"])

            # loadgen's shared system prompts: two prefixes of 128 tokens, each request one of
            # them plus 8 random tokens; the cluster serves most of them from the cache.
            prompts = os.path.join(tmp, "shared.jsonl")
            lg = subprocess.run([d, "loadgen", "--server", grpc_address, "--auth-token", TOKEN, "--shared-prefixes", "2",
                                 "--shared-prefix-len", "128", "--prompt-len", "8", "--max-new-tokens", "4", "--concurrency", "4",
                                 "--requests", "16", "--json", "--write-prompts", prompts],
                                capture_output=True, text=True, env=ENV, timeout=120)
            level = json.loads(lg.stdout.splitlines()[-1]) if lg.returncode == 0 else {}
            written = [json.loads(line)["prompt_ids"] for line in open(prompts)] if lg.returncode == 0 else []
            check(len(written) == 16 and all(len(p) == 136 for p in written) and len({tuple(p[:128]) for p in written}) == 2 and
                  len({tuple(p[128:]) for p in written}) == 16, "loadgen --shared-prefixes 2: two 128-token prompts, random suffixes")
            check(level.get("ok") == 16 and level.get("prompt_tokens") == 16 * 136 and
                  16 * 128 >= level.get("cached_tokens", 0) >= 8 * 128,
                  "loadgen counts the cached prompt tokens: at least half the shared ones", lg.stdout + lg.stderr)
        finally:
            stop(serve)
            if failures:
                dump_logs(tmp, ["serve.err"], 3000)
    finish()


if __name__ == "__main__":
    main()
