// Bytes as the JSON body of POST /v1/completions and of POST /v1/chat/completions: parsed into
// a GenerateRequest (or an OpenAI error naming the field), then prepared and validated as the
// server does.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "coordinator/openai_request.h"
#include "coordinator/validate.h"
#include "tests/fuzz/fuzz_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& tiny = daedalus::fuzz::Tiny();
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  daedalus::OpenAiParseOptions options;
  options.model_name = "tiny";
  for (bool chat : {false, true}) {
    daedalus::OpenAiRequest request;
    auto problem = daedalus::ParseOpenAiRequest(body, chat, tiny.config, tiny.tokenizer.get(), options, request);
    if (problem) {
      FUZZ_EXPECT(problem->http >= 400 && problem->http < 500 && !problem->message.empty());
      continue;
    }
    const absl::Status status = daedalus::PrepareGenerateRequest(tiny.config, tiny.tokenizer.get(), request.request);
    if (status.ok()) {
      FUZZ_EXPECT(request.request.prompt_ids_size() + request.request.max_new_tokens() <= tiny.config.max_position_embeddings);
    }
  }
  return 0;
}
