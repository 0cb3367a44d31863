// The registry alone, as tables: registrations checked and numbered into launches, formation,
// the elastic joiner (one at a time, at the next rank, in the next generation), removal with
// renumbering, and a smaller ucx world registering after a coordinator restart.
#include "coordinator/registry.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

namespace daedalus {
namespace {

using Clock = Registry::Clock;

class Link : public WorkerLink {
 public:
  bool Send(const v1::CoordinatorMessage&) override { return true; }
};

v1::RegisterRequest Request(int rank, int world, const std::string& launch, const std::string& transport = "ucx",
                            int64_t epoch = 0) {
  v1::RegisterRequest r;
  r.set_rank(rank);
  r.set_world_size(world);
  r.set_launch_id(launch);
  r.set_transport(transport);
  r.set_pid(100 + rank);
  r.set_data_plane_address(absl::StrCat("addr-", launch, "-", rank));
  r.set_kv_capacity_tokens(1024);
  r.set_kv_page_size(64);
  r.set_data_plane_epoch(epoch);
  return r;
}

TEST(Registry, StepsOfATable) {
  Registry reg(3, "bf16");
  const auto now = Clock::now();
  struct Step {
    const char* what;
    v1::RegisterRequest request;
    bool can_join;
    absl::StatusCode code;
    int64_t generation = 0;  // expected, when OK
    int rank = -1;
    bool joins = false, new_launch = false;
  };
  v1::RegisterRequest fp8 = Request(0, 3, "a");
  fp8.set_kv_dtype("fp8");
  v1::RegisterRequest empty_cache = Request(0, 3, "a");
  empty_cache.set_kv_capacity_tokens(0);
  const std::vector<Step> steps = {
      {"world of 4 on a coordinator of 3", Request(0, 4, "a"), false, absl::StatusCode::kFailedPrecondition},
      {"world of 2 on mpi", Request(0, 2, "a", "mpi"), false, absl::StatusCode::kFailedPrecondition},
      {"rank 3 of 3", Request(3, 3, "a"), false, absl::StatusCode::kInvalidArgument},
      {"fp8 cache on a bf16 coordinator", fp8, false, absl::StatusCode::kFailedPrecondition},
      {"no KV capacity", empty_cache, false, absl::StatusCode::kInvalidArgument},
      {"launch a, rank 1", Request(1, 3, "a"), false, absl::StatusCode::kOk, 1, 1, false, true},
      {"launch a, rank 1 again", Request(1, 3, "a"), false, absl::StatusCode::kAlreadyExists},
      {"launch a, any rank: the lowest free", Request(-1, 3, "a"), false, absl::StatusCode::kOk, 1, 0, false, false},
      {"launch a, any rank", Request(-1, 3, "a"), false, absl::StatusCode::kOk, 1, 2, false, false},
      {"launch a is full", Request(-1, 3, "a"), false, absl::StatusCode::kAlreadyExists},
      {"launch b replaces a", Request(0, 3, "b"), false, absl::StatusCode::kOk, 2, 0, false, true},
      // A ucx world that shrank to 2, after a coordinator restart: numbered above its epoch 7.
      {"launch c, a world of 2", Request(0, 2, "c", "ucx", 7), false, absl::StatusCode::kOk, 8, 0, false, true},
      {"launch c says 3", Request(1, 3, "c"), false, absl::StatusCode::kFailedPrecondition},
      {"launch c, rank 1", Request(1, 2, "c"), false, absl::StatusCode::kOk, 8, 1, false, false},
  };
  for (const Step& s : steps) {
    auto got = reg.Register(s.request, s.can_join, true, now);
    ASSERT_EQ(got.status().code(), s.code) << s.what << ": " << got.status();
    if (!got.ok()) continue;
    EXPECT_EQ(got->generation, s.generation) << s.what;
    EXPECT_EQ(got->rank, s.rank) << s.what;
    EXPECT_EQ(got->joins, s.joins) << s.what;
    EXPECT_EQ(got->new_launch, s.new_launch) << s.what;
  }
  EXPECT_TRUE(reg.Formed(8));
  EXPECT_EQ(reg.launch_world(), 2);
  const v1::Assignment a = reg.Assignment(8, 1);
  EXPECT_EQ(a.world_size(), 2);
  EXPECT_EQ(a.data_plane_addresses(1), "addr-c-1");
  EXPECT_FALSE(a.join());
}

TEST(Registry, AJoinerEntersAtTheNextRankWhenItAttachesAndARemovalRenumbers) {
  Registry reg(3, "");
  const auto now = Clock::now();
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(reg.Register(Request(r, 3, "a"), false, true, now).ok());
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(reg.Attach(r, 1, std::make_shared<Link>(), now).ok());
  EXPECT_TRUE(reg.all_ready());
  EXPECT_TRUE(reg.elastic());
  EXPECT_TRUE(absl::IsAlreadyExists(reg.Attach(1, 1, std::make_shared<Link>(), now).status()));
  EXPECT_TRUE(absl::IsAlreadyExists(reg.Register(Request(-1, 3, "a"), true, true, now).status())) << "full: no one joins";

  reg.Remove(1);  // generation 2: ranks 0 and 1 (was 2)
  EXPECT_EQ(reg.generation(), 2);
  ASSERT_EQ(reg.workers().size(), 2u);
  EXPECT_EQ(reg.workers()[1]->info.pid(), 102);
  EXPECT_EQ(reg.workers()[1]->info.rank(), 1);
  int rank = -1;
  EXPECT_EQ(reg.Find(2, 1, &rank), &*reg.workers()[1]) << "found by the names its Hello gave";
  EXPECT_EQ(rank, 1);
  EXPECT_EQ(reg.Find(1, 1), nullptr);

  EXPECT_TRUE(absl::IsUnavailable(reg.Register(Request(-1, 3, "a"), false, true, now).status()))
      << "not serving: the shrunk launch cannot take a member";
  auto joiner = reg.Register(Request(-1, 3, "a"), true, true, now);
  ASSERT_TRUE(joiner.ok()) << joiner.status();
  EXPECT_TRUE(joiner->joins);
  EXPECT_EQ(joiner->rank, 2);
  EXPECT_EQ(joiner->generation, 3);
  EXPECT_TRUE(absl::IsUnavailable(reg.Register(Request(-1, 3, "a"), true, true, now).status())) << "one at a time";
  EXPECT_TRUE(reg.Formed(3));
  const v1::Assignment a = reg.Assignment(3, 2);
  EXPECT_TRUE(a.join());
  EXPECT_EQ(a.world_size(), 3);
  EXPECT_EQ(reg.workers().size(), 2u) << "not in the world before it attaches";
  auto attached = reg.Attach(2, 3, std::make_shared<Link>(), now);
  ASSERT_TRUE(attached.ok()) << attached.status();
  EXPECT_EQ(*attached, Registry::Attached::kJoined);
  EXPECT_EQ(reg.generation(), 3);
  ASSERT_EQ(reg.workers().size(), 3u);
  for (const auto& w : reg.workers()) EXPECT_EQ(w->info.world_size(), 3);

  // A joiner planned for a world that then shrank must register again.
  reg.Remove(0);
  auto late = reg.Register(Request(-1, 3, "a"), true, true, now);
  ASSERT_TRUE(late.ok());
  reg.Remove(0);
  EXPECT_TRUE(absl::IsFailedPrecondition(reg.Attach(late->rank, late->generation, std::make_shared<Link>(), now).status()));
  // A joiner that never attaches is forgotten after the timeout, and another may join.
  auto slow = reg.Register(Request(-1, 3, "a"), true, true, now);
  ASSERT_TRUE(slow.ok());
  reg.ForgetStaleJoiner(now + std::chrono::seconds(5), std::chrono::seconds(10));
  EXPECT_TRUE(absl::IsUnavailable(reg.Register(Request(-1, 3, "a"), true, true, now).status()));
  reg.ForgetStaleJoiner(now + std::chrono::seconds(11), std::chrono::seconds(10));
  EXPECT_TRUE(reg.Register(Request(-1, 3, "a"), true, true, now).ok());
}

}  // namespace
}  // namespace daedalus
