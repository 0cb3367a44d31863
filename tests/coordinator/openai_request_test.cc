// A chat request that names no max_tokens gets the default, lowered to what the largest
// worker's KV cache holds beside its prompt (it had been refused outright as never fitting);
// one that names max_tokens keeps it, and admission names the shortfall.
#include "coordinator/openai_request.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "worker/make_tokenizer.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

class OpenAiRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    const auto dir = std::filesystem::temp_directory_path() / ("daedalus-openai-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    ASSERT_TRUE(WriteTokenizer(config_, dir.string()).ok());
    auto tokenizer = Tokenizer::Load(dir.string());
    std::filesystem::remove_all(dir);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(*tokenizer);
    options_.model_name = "tiny";
  }
  OpenAiRequest Chat(const std::string& extra) {
    OpenAiRequest r;
    const std::string body = R"({"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}])" + extra + "}";
    auto problem = ParseOpenAiRequest(body, true, config_, tokenizer_.get(), options_, r);
    EXPECT_FALSE(problem.has_value()) << problem->message;
    return r;
  }
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  OpenAiParseOptions options_;
};

TEST_F(OpenAiRequestTest, TheDefaultMaxTokensFitsTheLargestCache) {
  OpenAiRequest r = Chat("");
  const int64_t prompt = r.request.prompt_ids_size();
  ASSERT_GT(prompt, 2);
  EXPECT_TRUE(r.max_tokens_defaulted);
  EXPECT_EQ(r.request.max_new_tokens(), options_.default_chat_max_tokens);
  FitDefaultMaxTokens(r, 1 << 20);  // room to spare: the default stands
  EXPECT_EQ(r.request.max_new_tokens(), options_.default_chat_max_tokens);
  FitDefaultMaxTokens(r, 640);
  EXPECT_EQ(r.request.max_new_tokens(), 640 - prompt);
  OpenAiRequest full = Chat("");
  FitDefaultMaxTokens(full, prompt);  // no room at all: left for admission to refuse by name
  EXPECT_EQ(full.request.max_new_tokens(), options_.default_chat_max_tokens);
}

TEST_F(OpenAiRequestTest, AMaxTokensAskedForIsKept) {
  for (const char* field : {"max_tokens", "max_completion_tokens"}) {
    OpenAiRequest r = Chat(std::string(R"(, ")") + field + R"(": 900)");
    EXPECT_FALSE(r.max_tokens_defaulted) << field;
    FitDefaultMaxTokens(r, 640);
    EXPECT_EQ(r.request.max_new_tokens(), 900) << field;
  }
}

}  // namespace
}  // namespace daedalus
