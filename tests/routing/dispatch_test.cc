// Dispatch and combine over the local transport. Every row's payload encodes its source rank,
// token and column, so a misrouted or misplaced row names itself.
#include "routing/dispatch.h"

#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace daedalus {
namespace {

constexpr int64_t kHidden = 8;

// Exact in float; the layer's half-units tell a row left from another layer's call.
float Payload(int rank, int64_t token, int64_t column, int layer = 0) {
  return static_cast<float>(rank * 100000 + token * 10 + column) + 0.5f * static_cast<float>(layer);
}

struct Case {
  int world;
  int n_experts, topk, redundant;
  std::vector<int64_t> tokens;  // per rank
  std::string routing;          // "random" | "one-expert"
  int64_t hidden = kHidden;
  bool stream = false;  // dispatch rows written past the caches whatever their size
  // Exchanges sharing one ExchangeBuffers, as a model's MoE layers do, each called once a step;
  // odd steps route 3 · tokens + 1 tokens a rank, so the buffers grow and shrink between steps.
  int layers = 1, steps = 1;
};

// Expert ids [tokens, topk], distinct and ascending per token.
std::vector<int32_t> Route(const Case& c, int rank, int64_t n, int call) {
  std::mt19937 rng(rank * 7919 + static_cast<unsigned>(n) + 104729 * static_cast<unsigned>(call));
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int32_t> all(c.n_experts);
    for (int e = 0; e < c.n_experts; ++e) all[e] = e;
    if (c.routing == "random") std::shuffle(all.begin(), all.end(), rng);
    std::sort(all.begin(), all.begin() + c.topk);
    ids.insert(ids.end(), all.begin(), all.begin() + c.topk);
  }
  return ids;
}

void RunCase(const Case& c) {
  auto placement = ComputePlacement(c.n_experts, c.world, c.redundant, {});
  ASSERT_TRUE(placement.ok()) << placement.status();
  auto transports = MakeLocalTransports(c.world);
  std::vector<std::string> errors(c.world);
  std::vector<int64_t> received_rows(c.world, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < c.world; ++r) {
    threads.emplace_back([&, r] {
      auto fail = [&](const std::string& e) { errors[r] += e + "\n"; };
      auto buffers = std::make_shared<ExchangeBuffers>();
      if (c.stream) buffers->stream_above = 0;
      std::vector<std::unique_ptr<ExpertExchange>> layers;
      for (int l = 0; l < c.layers; ++l)
        layers.push_back(std::make_unique<ExpertExchange>(*transports[r], *placement, c.hidden, c.n_experts, buffers));
      for (int call = 0; call < c.layers * c.steps; ++call) {
        const int l = call % c.layers, step = call / c.layers;
        ExpertExchange& exchange = *layers[l];
        const int64_t n = step % 2 == 0 ? c.tokens[r] : 3 * c.tokens[r] + 1, hidden = c.hidden;
        std::vector<float> x(n * hidden);
        for (int64_t t = 0; t < n; ++t)
          for (int64_t j = 0; j < hidden; ++j) x[t * hidden + j] = Payload(r, t, j, l);
        const std::vector<int32_t> ids = Route(c, r, n, call);
        ReceivedRows rows;
        absl::Status s = exchange.Dispatch(x.data(), n, c.topk, ids.data(), "test", rows);
        if (!s.ok()) return fail(std::string(s.message()));
        received_rows[r] += rows.rows();
        // Each token's activations cross to a rank once, however many of its slots go there: a
        // header, a reference per slot and a row per token, to every other rank with a slot.
        std::vector<size_t> want(c.world, 0);
        std::vector<std::set<int64_t>> tokens_to(c.world);
        std::vector<int64_t> slots_to(c.world, 0);
        for (int64_t slot = 0; slot < n * c.topk; ++slot) {
          const int d = placement->RankFor(ids[slot], slot / c.topk, slot % c.topk);
          ++slots_to[d];
          tokens_to[d].insert(slot / c.topk);
        }
        for (int d = 0; d < c.world; ++d) {
          if (d == r || slots_to[d] == 0) continue;
          want[d] = sizeof(DispatchHeader) + slots_to[d] * sizeof(SlotRef) +
                    tokens_to[d].size() * hidden * sizeof(float);
        }
        if (exchange.sent_bytes() != want)
          fail(absl::StrCat("rank ", r, " sent other bytes than a row per token and rank"));
        // Each row: held here, grouped by expert, payload from the rank and token its header names;
        // the "expert" output (payload × (expert + 1)) goes where combine sends it from.
        const std::vector<float*> out = exchange.CombineOutputs(rows);
        for (int64_t i = 0; i < rows.rows(); ++i) {
          const RowHeader& h = rows.headers[i];
          if (!(placement->Holds(r, h.expert))) fail(absl::StrCat("row for expert ", h.expert, " on rank ", r));
          if (i < rows.expert_begin[h.expert] || i >= rows.expert_begin[h.expert + 1])
            fail("row outside its expert's group");
          for (int64_t j = 0; j < hidden; ++j) {
            const float want = Payload(h.source_rank, h.slot / c.topk, j, l);
            if (rows.x[i][j] != want) {
              fail(absl::StrCat("rank ", r, " row ", i, " says rank ", h.source_rank, " slot ", h.slot, " but carries ",
                                rows.x[i][j]));
            }
            out[i][j] = rows.x[i][j] * static_cast<float>(h.expert + 1);
          }
        }
        std::vector<const float*> slots;
        s = exchange.Combine("test", slots);
        if (!s.ok()) return fail(std::string(s.message()));
        if (static_cast<int64_t>(slots.size()) != n * c.topk) return fail("wrong number of slots back");
        for (int64_t slot = 0; slot < n * c.topk; ++slot)
          for (int64_t j = 0; j < hidden; ++j)
            if (slots[slot][j] != Payload(r, slot / c.topk, j, l) * static_cast<float>(ids[slot] + 1))
              fail(absl::StrCat("rank ", r, " layer ", l, " step ", step, " slot ", slot, " came back wrong"));
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < c.world; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
  int64_t sent = 0, received = 0;
  for (int r = 0; r < c.world; ++r) {
    for (int step = 0; step < c.steps; ++step)
      sent += c.layers * (step % 2 == 0 ? c.tokens[r] : 3 * c.tokens[r] + 1) * c.topk;
    received += received_rows[r];
  }
  EXPECT_EQ(sent, received);
}

TEST(ExpertExchange, RandomRoutingOverWorlds) {
  for (int world : {1, 2, 3, 5}) {
    std::vector<int64_t> tokens;
    for (int r = 0; r < world; ++r) tokens.push_back(3 + 4 * r);
    RunCase({world, 16, 4, 0, tokens, "random"});
  }
}

TEST(ExpertExchange, RowsWrittenPastTheCaches) {
  // Rows of 8 floats (every row 16-byte aligned: non-temporal stores) and of 7 (every other row
  // not, copied normally), both with the short tail StreamFloats copies one float at a time.
  RunCase({3, 16, 4, 0, {9, 5, 7}, "random", 8, true});
  RunCase({3, 16, 4, 0, {9, 5, 7}, "random", 7, true});
  RunCase({2, 8, 3, 0, {6, 4}, "random", 1030, true});
}

TEST(ExpertExchange, LayersShareOneSetOfBuffers) {
  // Each layer's rows carry its number: a row left from another layer's call fails the check.
  RunCase({2, 8, 3, 0, {5, 9}, "random", kHidden, false, 3, 4});
  RunCase({3, 16, 4, 0, {7, 0, 4}, "random", 7, true, 2, 4});
  RunCase({4, 16, 8, 4, {6, 3, 9, 1}, "random", 1030, true, 2, 3});
}

TEST(ExpertExchange, RanksWithNoTokensStillTakePart) {
  RunCase({4, 16, 4, 0, {0, 9, 0, 2}, "random"});
  RunCase({3, 16, 4, 0, {0, 0, 0}, "random"});
}

TEST(ExpertExchange, EveryTokenToTheSameExperts) {
  RunCase({3, 16, 2, 0, {20, 7, 13}, "one-expert"});  // experts 0 and 1 take everything
}

TEST(ExpertExchange, EveryExpertReplicatedEverywhere) {
  RunCase({3, 8, 3, 16, {11, 5, 8}, "random"});  // 8 experts × 3 ranks: every rank holds all
}

// A transport whose received bytes pass through `corrupt` on one rank: what a peer speaking
// another format, or a damaged message, looks like to Dispatch.
class CorruptingTransport : public Transport {
 public:
  using Corrupt = std::function<void(std::vector<uint8_t>&, std::vector<size_t>&)>;
  CorruptingTransport(Transport& inner, Corrupt corrupt) : inner_(inner), corrupt_(std::move(corrupt)) {}
  int rank() const override { return inner_.rank(); }
  int world_size() const override { return inner_.world_size(); }
  absl::Status AllToAllV(const void* send, const std::vector<size_t>& send_bytes, std::vector<uint8_t>& recv,
                         std::vector<size_t>& recv_bytes, const std::string& what) override {
    absl::Status s = inner_.AllToAllV(send, send_bytes, recv, recv_bytes, what);
    if (s.ok() && corrupt_) corrupt_(recv, recv_bytes);
    return s;
  }
  absl::Status AllReduceSum(std::vector<int64_t>& values, const std::string& what) override {
    return inner_.AllReduceSum(values, what);
  }
  absl::Status Barrier(const std::string& what) override { return inner_.Barrier(what); }

 private:
  Transport& inner_;
  Corrupt corrupt_;
};

// Rank 1 receives rank 0's dispatch message altered by `corrupt`; returns rank 1's status (rank
// 0's must be OK: its own message from rank 1 is intact).
absl::Status DispatchWithCorruption(const CorruptingTransport::Corrupt& corrupt) {
  constexpr int kExperts = 4, kTopk = 2;
  auto placement = ComputePlacement(kExperts, 2, 0, {});
  EXPECT_TRUE(placement.ok());
  auto transports = MakeLocalTransports(2);
  std::vector<absl::Status> status(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      CorruptingTransport t(*transports[r], r == 1 ? corrupt : nullptr);
      ExpertExchange exchange(t, *placement, kHidden, kExperts);
      std::vector<float> x(3 * kHidden, 1.0f);
      const std::vector<int32_t> ids = {0, 3, 1, 2, 2, 3};  // most tokens have a slot on each rank
      ReceivedRows rows;
      status[r] = exchange.Dispatch(x.data(), 3, kTopk, ids.data(), "layer 3", rows);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_TRUE(status[0].ok()) << status[0];
  return status[1];
}

TEST(ExpertExchange, MalformedDispatchNamesItsSender) {
  auto field = [](std::vector<uint8_t>& recv, size_t offset, int32_t value) {
    std::memcpy(recv.data() + offset, &value, sizeof value);
  };
  // The header's row width.
  absl::Status s = DispatchWithCorruption(
      [&](std::vector<uint8_t>& r, std::vector<size_t>&) { field(r, offsetof(DispatchHeader, hidden), 7); });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("from rank 0"), std::string::npos) << s;
  EXPECT_NE(s.message().find("layer 3"), std::string::npos) << s;
  // A slot's row past the message's rows.
  s = DispatchWithCorruption([&](std::vector<uint8_t>& r, std::vector<size_t>&) {
    field(r, sizeof(DispatchHeader) + offsetof(SlotRef, row), 99);
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("refers to row 99"), std::string::npos) << s;
  // A slot for an expert rank 1 does not hold.
  s = DispatchWithCorruption([&](std::vector<uint8_t>& r, std::vector<size_t>&) {
    field(r, sizeof(DispatchHeader) + offsetof(SlotRef, expert), 0);
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_NE(s.message().find("does not serve"), std::string::npos) << s;
  // A message cut short.
  s = DispatchWithCorruption([&](std::vector<uint8_t>& r, std::vector<size_t>& bytes) {
    r.resize(r.size() - 4);
    bytes[0] -= 4;
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("from rank 0"), std::string::npos) << s;
  // Header fields no message can have: negative rows, fewer slots than rows, another sender.
  const std::vector<std::pair<size_t, int32_t>> headers = {
      {offsetof(DispatchHeader, n_rows), -1}, {offsetof(DispatchHeader, n_slots), 0},
      {offsetof(DispatchHeader, source_rank), 1}};
  for (const auto& [offset, value] : headers) {
    s = DispatchWithCorruption([&](std::vector<uint8_t>& r, std::vector<size_t>&) { field(r, offset, value); });
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("from rank 0"), std::string::npos) << s;
  }
  // A negative slot.
  s = DispatchWithCorruption([&](std::vector<uint8_t>& r, std::vector<size_t>&) {
    field(r, sizeof(DispatchHeader) + offsetof(SlotRef, slot), -5);
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("slot -5"), std::string::npos) << s;
  // A message counted as from the receiver itself, whose own rows never cross the transport.
  s = DispatchWithCorruption([&](std::vector<uint8_t>& r, std::vector<size_t>& bytes) {
    field(r, offsetof(DispatchHeader, source_rank), 1);
    std::swap(bytes[0], bytes[1]);
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("from itself"), std::string::npos) << s;
  // Counts that do not add up to what arrived.
  s = DispatchWithCorruption([&](std::vector<uint8_t>& r, std::vector<size_t>&) { r.resize(r.size() - 4); });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

// A transport whose every AllToAllV fails, as a deadline or an interrupt ends one.
class FailingTransport : public Transport {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  absl::Status AllToAllV(const void*, const std::vector<size_t>&, std::vector<uint8_t>&, std::vector<size_t>&,
                         const std::string& what) override {
    return absl::DeadlineExceededError(absl::StrCat("all-to-all (", what, ") timed out"));
  }
  absl::Status AllReduceSum(std::vector<int64_t>&, const std::string&) override { return absl::OkStatus(); }
  absl::Status Barrier(const std::string&) override { return absl::OkStatus(); }
};

TEST(ExpertExchange, BuffersOfAFailedExchangeOutliveItsOwners) {
  // The transport may still be reading the send buffer or writing a receive after it gave up: the
  // buffers stay allocated after the exchange and the engine that owned them are gone.
  auto placement = ComputePlacement(4, 2, 0, {});
  ASSERT_TRUE(placement.ok());
  FailingTransport transport;
  auto buffers = std::make_shared<ExchangeBuffers>();
  const std::weak_ptr<ExchangeBuffers> watch = buffers;
  {
    ExpertExchange exchange(transport, *placement, kHidden, 4, buffers);
    std::vector<float> x(3 * kHidden, 1.0f);
    const std::vector<int32_t> ids = {0, 3, 1, 2, 2, 3};
    ReceivedRows rows;
    const absl::Status s = exchange.Dispatch(x.data(), 3, 2, ids.data(), "layer 5", rows);
    EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  }
  buffers.reset();
  EXPECT_FALSE(watch.expired());
  // An exchange that did not fail frees its buffers with its owners.
  auto fine = std::make_shared<ExchangeBuffers>();
  const std::weak_ptr<ExchangeBuffers> watch_fine = fine;
  {
    auto transports = MakeLocalTransports(1);
    const auto one = ComputePlacement(4, 1, 0, {});
    ExpertExchange exchange(*transports[0], *one, kHidden, 4, fine);
    std::vector<float> x(kHidden, 1.0f);
    const std::vector<int32_t> ids = {0, 1};
    ReceivedRows rows;
    EXPECT_TRUE(exchange.Dispatch(x.data(), 1, 2, ids.data(), "layer 5", rows).ok());
  }
  fine.reset();
  EXPECT_TRUE(watch_fine.expired());
}

}  // namespace
}  // namespace daedalus
