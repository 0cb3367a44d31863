#include "coordinator/registry.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"

namespace daedalus {

Registry::Registry(int world_size, std::string kv_dtype)
    : world_size_(world_size), kv_dtype_(std::move(kv_dtype)), launch_world_(world_size) {}

absl::StatusOr<Registry::Registered> Registry::Register(const v1::RegisterRequest& r, bool can_join, bool open,
                                                        Clock::time_point now) {
  const std::string who = absl::StrCat("worker ", r.rank() < 0 ? std::string("(any rank)") : absl::StrCat("rank ", r.rank()), " (",
                                       r.host(), ", pid ", r.pid(), ")");
  // Elastic workers that shrank (a peer lost) register again, with a restarted coordinator, as
  // the smaller world they are; joiners bring it back to world_size.
  const bool shrunk = r.transport() == "ucx" && r.world_size() > 0 && r.world_size() < world_size_;
  if (r.world_size() != 0 && r.world_size() != world_size_ && !shrunk) {
    return absl::FailedPreconditionError(absl::StrCat(who, " was launched with world size ", r.world_size(),
                                                      "; this coordinator serves ", world_size_, " workers"));
  }
  if (r.rank() < -1 || r.rank() >= world_size_) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": rank outside [0, ", world_size_, ")"));
  }
  if (r.kv_capacity_tokens() <= 0 || r.kv_page_size() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(who, ": KV capacity and page size must be positive"));
  }
  const std::string kv_dtype = r.kv_dtype().empty() ? "bf16" : r.kv_dtype();
  if (!kv_dtype_.empty() && kv_dtype != kv_dtype_) {
    return absl::FailedPreconditionError(absl::StrCat(who, " keeps its latent cache as --kv-dtype ", kv_dtype,
                                                      "; this coordinator serves --kv-dtype ", kv_dtype_));
  }
  if (can_join && static_cast<int>(workers_.size()) < world_size_ && r.transport() == "ucx" &&
      (r.launch_id().empty() || r.launch_id() == launch_id_)) {
    if (joining_) {
      return absl::UnavailableError(absl::StrCat(who, ": worker ", joining_->info.host(), " pid ", joining_->info.pid(),
                                                 " is joining the cluster; register again once it serves"));
    }
    const int rank = static_cast<int>(workers_.size());
    joining_.emplace();
    joining_->info = r;
    joining_->info.set_rank(rank);
    joining_->info.set_world_size(rank + 1);
    joining_->health.Restart(now);
    Registered out;
    out.generation = generation_ + 1;
    out.rank = rank;
    out.joins = true;
    return out;
  }
  Registered out;
  std::string launch = r.launch_id();
  if (launch.empty()) {
    // Workers started without a shared launch id (any launcher) form "anonymous" launches: join
    // the one that is still forming, else start the next.
    const bool forming = launch_id_.rfind("anon-", 0) == 0 && open &&
                         std::any_of(workers_.begin(), workers_.end(), [](const auto& w) { return !w.has_value(); });
    launch = forming ? launch_id_ : absl::StrCat("anon-", generation_ + 1);
  }
  if (launch != launch_id_) {
    out.new_launch = true;
    for (auto& w : workers_)
      if (w && w->link) out.superseded.push_back(w->link);
    // Numbered above any world the workers' data plane has been in (a restarted coordinator).
    generation_ = std::max(generation_ + 1, r.data_plane_epoch() + 1);
    launch_id_ = launch;
    launch_world_ = shrunk ? r.world_size() : world_size_;
    workers_.assign(launch_world_, std::nullopt);
    joining_.reset();
  }
  if (r.world_size() != 0 && r.world_size() != launch_world_) {
    return absl::FailedPreconditionError(absl::StrCat(who, " was launched with world size ", r.world_size(), "; launch ", launch,
                                                      " forms with ", launch_world_, " workers"));
  }
  if (static_cast<int>(workers_.size()) != launch_world_) {  // shrunk, and not serving just now
    return absl::UnavailableError(absl::StrCat(who, ": launch ", launch, " serves with ", workers_.size(), " of ",
                                               launch_world_, " workers and is re-forming; register again"));
  }
  int rank = r.rank();
  if (rank >= launch_world_) return absl::InvalidArgumentError(absl::StrCat(who, ": rank outside [0, ", launch_world_, ")"));
  if (rank < 0) {
    for (int i = 0; i < launch_world_ && rank < 0; ++i)
      if (!workers_[i]) rank = i;
    if (rank < 0) {
      return absl::AlreadyExistsError(absl::StrCat(who, ": all ", launch_world_, " ranks of launch ", launch, " are registered"));
    }
  }
  std::optional<Worker>& slot = workers_[rank];
  if (slot) {
    return absl::AlreadyExistsError(absl::StrCat(who, ": rank ", rank, " of launch ", launch, " is already registered (",
                                                 slot->info.host(), ", pid ", slot->info.pid(), ")"));
  }
  slot.emplace();
  slot->info = r;
  slot->info.set_rank(rank);
  slot->info.set_world_size(launch_world_);
  slot->health.Restart(now);
  out.generation = generation_;
  out.rank = rank;
  return out;
}

bool Registry::Formed(int64_t generation) const {
  if (joining_ && generation == generation_ + 1) return true;
  return generation == generation_ && std::all_of(workers_.begin(), workers_.end(), [](const auto& w) { return w.has_value(); });
}

v1::Assignment Registry::Assignment(int64_t generation, int rank) const {
  v1::Assignment a;
  a.set_generation(generation);
  for (const auto& w : workers_) a.add_data_plane_addresses(w ? w->info.data_plane_address() : "");
  const bool joins = joining_ && generation == generation_ + 1 && rank == joining_->info.rank();
  if (joins) a.add_data_plane_addresses(joining_->info.data_plane_address());
  a.set_rank(rank);
  a.set_world_size(a.data_plane_addresses_size());
  a.set_join(joins);
  return a;
}

absl::StatusOr<Registry::Attached> Registry::Attach(int rank, int64_t generation, std::shared_ptr<WorkerLink> link,
                                                    Clock::time_point now) {
  const bool joins = joining_ && generation == generation_ + 1 && rank == joining_->info.rank() &&
                     rank == static_cast<int>(workers_.size());
  if (!joins && (generation != generation_ || rank < 0 || rank >= static_cast<int>(workers_.size()) || !workers_[rank])) {
    return absl::FailedPreconditionError(absl::StrCat("worker rank ", rank, " of generation ", generation,
                                                      " is not registered in the current generation ", generation_));
  }
  if (joins) {
    workers_.push_back(std::move(joining_));
    joining_.reset();
    ++generation_;
    for (auto& w : workers_) w->info.set_world_size(rank + 1);
  }
  Worker& w = *workers_[rank];
  if (w.state != WorkerState::kLoading) return absl::AlreadyExistsError(absl::StrCat("worker rank ", rank, " is already attached"));
  w.state = WorkerState::kReady;
  w.link = std::move(link);
  w.hello_rank = rank;
  w.hello_generation = generation;
  w.health.Restart(now);
  return joins ? Attached::kJoined : Attached::kMember;
}

Registry::Worker* Registry::Find(int hello_rank, int64_t generation, int* rank) {
  for (size_t r = 0; r < workers_.size(); ++r) {
    auto& w = workers_[r];
    if (!w || w->hello_rank != hello_rank || w->hello_generation != generation) continue;
    if (rank != nullptr) *rank = static_cast<int>(r);
    return &*w;
  }
  return nullptr;
}

void Registry::Remove(int rank) {
  workers_.erase(workers_.begin() + rank);
  ++generation_;
  joining_.reset();  // planned for the old world: it must register again
  const int world = static_cast<int>(workers_.size());
  for (int r = 0; r < world; ++r) {
    workers_[r]->info.set_rank(r);
    workers_[r]->info.set_world_size(world);
  }
}

void Registry::ForgetStaleJoiner(Clock::time_point now, std::chrono::milliseconds timeout) {
  if (!joining_ || now - joining_->health.last_heard() <= timeout) return;
  std::fprintf(stderr, "daedalus: worker %s pid %lld registered to join but did not attach within %lld s; forgotten\n",
               joining_->info.host().c_str(), static_cast<long long>(joining_->info.pid()),
               static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()));
  joining_.reset();
}

bool Registry::elastic() const {
  return !workers_.empty() && std::all_of(workers_.begin(), workers_.end(), [](const auto& w) {
    return w && w->info.transport() == "ucx" && (w->info.device().empty() || w->info.device() == "cpu");
  });
}

bool Registry::all_ready() const {
  return !workers_.empty() &&
         std::all_of(workers_.begin(), workers_.end(), [](const auto& w) { return w && w->state == WorkerState::kReady; });
}

}  // namespace daedalus
