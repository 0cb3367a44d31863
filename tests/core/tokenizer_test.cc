// The streaming decoder never emits part of a UTF-8 character and adds up to Decode; the
// lossy UTF-8 rule on hand-made byte strings; the chat format.
#include "core/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/utf8.h"
#include "worker/make_tokenizer.h"
#include "worker/presets.h"

namespace daedalus {
namespace {

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("tokenizer_test_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    ASSERT_TRUE(WriteTokenizer(*PresetConfig("tiny"), dir_.string()).ok());
    auto t = Tokenizer::Load(dir_.string());
    ASSERT_TRUE(t.ok()) << t.status();
    tokenizer_ = std::move(*t);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

bool WholeUtf8(const std::string& s) { return Utf8FirstInvalid(s) == std::string::npos; }

TEST_F(TokenizerTest, StreamingNeverSplitsACharacterAndEqualsDecode) {
  std::mt19937 rng(3);
  // Byte tokens are ids 5..260: random bytes make partial and invalid sequences.
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> ids;
    const int n = 1 + static_cast<int>(rng() % 24);
    for (int i = 0; i < n; ++i) ids.push_back(trial % 2 ? 5 + static_cast<int32_t>(rng() % 256) : static_cast<int32_t>(rng() % 512));
    StreamDecoder stream(*tokenizer_);
    std::string joined;
    for (int32_t id : ids) {
      const std::string piece = stream.Push(id);
      EXPECT_TRUE(WholeUtf8(piece)) << "trial " << trial;
      joined += piece;
    }
    joined += stream.Finish();
    EXPECT_EQ(joined, tokenizer_->Decode(ids)) << "trial " << trial;
  }
  // A character split over tokens comes out whole, once complete: "é" = C3 A9.
  StreamDecoder stream(*tokenizer_);
  EXPECT_EQ(stream.Push(5 + 0xC3), "");
  EXPECT_EQ(stream.Push(5 + 0xA9), "\xc3\xa9");
}

TEST(Utf8Test, ReplacesMaximalInvalidSubparts) {
  EXPECT_EQ(Utf8Lossy("a\xffz"), "a\xef\xbf\xbdz");
  EXPECT_EQ(Utf8Lossy("\xe2\x82" "A"), "\xef\xbf\xbd" "A");           // a truncated 3-byte sequence: one U+FFFD
  EXPECT_EQ(Utf8Lossy("\xed\xa0\x80"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");  // a surrogate: three
  EXPECT_EQ(Utf8Lossy("\xf0\x9f\x99\x82"), "\xf0\x9f\x99\x82");        // 🙂 intact
  EXPECT_EQ(Utf8CompletePrefix("ab\xf0\x9f\x99"), 2u);                 // waits for the 4th byte
  EXPECT_EQ(Utf8CompletePrefix("ab\xff"), 3u);                         // invalid is complete
  EXPECT_EQ(Utf8FirstInvalid("ok\xc0\xaf"), 2u);                       // overlong
}

TEST_F(TokenizerTest, ChatFormatIsDeepSeekV3s) {
  auto ids = tokenizer_->EncodeChat({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(tokenizer_->Decode(*ids, /*skip_special_tokens=*/false),
            "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>Hello<｜end▁of▁sentence｜><｜User｜>Bye<｜Assistant｜>");
  EXPECT_EQ((*ids)[0], 0);
  EXPECT_EQ(ids->back(), *tokenizer_->TokenId("<｜Assistant｜>"));
  EXPECT_FALSE(tokenizer_->EncodeChat({{"tool", "x"}}).ok());
}

TEST_F(TokenizerTest, ARegexThatGivesUpIsAnErrorNotAShorterSplit) {
  // A Split pattern that backtracks past PCRE2's match limit on 40 a's: the text is refused
  // (it had been left unsplit after the failure, the last "c" kept against the pattern).
  std::ifstream in(dir_ / "tokenizer.json");
  nlohmann::json j = nlohmann::json::parse(in);
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", "(?:(a+)+b)|c"}}}, {"behavior", "Removed"},
                           {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  auto t = Tokenizer::FromJson(j, nlohmann::json::object(), "x/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status();
  auto between_cs = [](size_t a) { return std::string(1, 'c').append(a, 'a').append(1, 'c'); };
  auto short_one = (*t)->PreTokenize(between_cs(5));
  ASSERT_TRUE(short_one.ok()) << short_one.status();
  EXPECT_EQ(*short_one, std::vector<std::string>{std::string(5, 'a')});  // both c's removed
  auto long_one = (*t)->PreTokenize(between_cs(40));
  EXPECT_EQ(long_one.status().code(), absl::StatusCode::kInvalidArgument) << long_one.status();
  EXPECT_EQ((*t)->Encode(between_cs(40)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerLoadTest, UnsupportedPartsAreNamed) {
  nlohmann::json j = {{"model", {{"type", "WordPiece"}, {"vocab", nlohmann::json::object()}}}};
  auto t = Tokenizer::FromJson(j, nlohmann::json::object(), "x/tokenizer.json");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("WordPiece"), std::string::npos) << t.status();
}

}  // namespace
}  // namespace daedalus
