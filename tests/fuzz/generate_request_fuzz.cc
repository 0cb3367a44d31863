// Bytes as a client's GenerateRequest on the wire (the gRPC message body): parsed, then
// prepared (prompt_text through the tokenizer) and validated against the `tiny` preset. An
// accepted request holds what the admission arithmetic relies on.
#include <cstddef>
#include <cstdint>

#include "coordinator/validate.h"
#include "google/protobuf/stubs/logging.h"
#include "tests/fuzz/fuzz_model.h"

// Protobuf logs every string field that is not UTF-8 before refusing the message; the fuzzer
// makes millions of those.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& tiny = daedalus::fuzz::Tiny();
  daedalus::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const absl::Status status = daedalus::PrepareGenerateRequest(tiny.config, tiny.tokenizer.get(), request);
  if (!status.ok()) {
    FUZZ_EXPECT(!status.message().empty());
    return 0;
  }
  FUZZ_EXPECT(request.prompt_ids_size() > 0);
  for (int32_t id : request.prompt_ids()) FUZZ_EXPECT(id >= 0 && id < tiny.config.vocab_size);
  FUZZ_EXPECT(request.max_new_tokens() >= 0);
  FUZZ_EXPECT(request.prompt_ids_size() + request.max_new_tokens() <= tiny.config.max_position_embeddings);
  FUZZ_EXPECT(request.logprobs() >= 0 && request.logprobs() <= daedalus::kMaxLogprobs);
  return 0;
}
