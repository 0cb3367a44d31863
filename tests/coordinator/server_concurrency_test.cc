// The coordinator process over real gRPC on loopback, from many threads at once: streaming
// clients that read, cancel and let deadlines expire; fake workers (raw Cluster stubs) that
// register, take admissions and aborts, stream tokens and heartbeat; a worker whose control
// stream drops mid-load, after which a new launch re-forms the cluster; then a clean shutdown.
// Meant for TSan (scripts/test.sh runs it there); in every build it checks that each call got
// exactly one answer of an allowed kind, consistent with what it streamed.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <random>
#include <thread>

#include "coordinator/server.h"
#include "grpcpp/grpcpp.h"
#include "proto/cluster.grpc.pb.h"
#include "proto/serving.grpc.pb.h"

namespace daedalus {
namespace {

using std::chrono::milliseconds;
constexpr int kWorld = 2;

// One fake worker: registers with its launch, then serves its control stream until stopped or
// the stream ends: each admitted sequence gets a token every 2 ms until its max_new_tokens.
class FakeWorker {
 public:
  FakeWorker(std::shared_ptr<grpc::Channel> channel, int rank, std::string launch)
      : stub_(v1::Cluster::NewStub(channel)), rank_(rank), launch_(std::move(launch)), thread_([this] { Run(); }) {}
  ~FakeWorker() {
    stop_ = true;
    Drop();
    thread_.join();
  }
  void Drop() {
    std::lock_guard<std::mutex> lock(mu_);
    if (context_) context_->TryCancel();
  }
  bool attached() const { return attached_; }

 private:
  void Run() {
    v1::RegisterRequest r;
    r.set_rank(rank_);
    r.set_world_size(kWorld);
    r.set_host("fake");
    r.set_pid(100 + rank_);
    r.set_launch_id(launch_);
    r.set_kv_capacity_tokens(4096);
    r.set_kv_page_size(64);
    v1::Assignment assignment;
    {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      context.set_wait_for_ready(true);
      ASSERT_TRUE(stub_->Register(&context, r, &assignment).ok());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      context_ = std::make_unique<grpc::ClientContext>();
    }
    auto stream = stub_->Control(context_.get());
    v1::WorkerMessage hello;
    hello.mutable_hello()->set_rank(rank_);
    hello.mutable_hello()->set_generation(assignment.generation());
    if (!stream->Write(hello)) return;
    attached_ = true;
    std::mutex inbox_mu;
    std::vector<v1::CoordinatorMessage> inbox;
    std::atomic<bool> closed{false};
    std::thread reader([&] {
      v1::CoordinatorMessage m;
      while (stream->Read(&m)) {
        std::lock_guard<std::mutex> lock(inbox_mu);
        inbox.push_back(m);
      }
      closed = true;
    });
    std::map<uint64_t, int64_t> left;
    int64_t step = 0;
    while (!stop_ && !closed) {
      std::this_thread::sleep_for(milliseconds(2));
      std::vector<v1::CoordinatorMessage> now;
      {
        std::lock_guard<std::mutex> lock(inbox_mu);
        now.swap(inbox);
      }
      bool shutdown = false;
      for (const auto& m : now) {
        if (m.has_admit()) left[m.admit().sequence()] = m.admit().max_new_tokens();
        if (m.has_abort()) left.erase(m.abort().sequence());
        shutdown |= m.has_shutdown();
      }
      if (shutdown) break;
      v1::WorkerMessage out;
      for (auto it = left.begin(); it != left.end();) {
        if (it->second > 0) {
          v1::TokenEvent* t = out.mutable_events()->add_tokens();
          t->set_sequence(it->first);
          t->set_token_id(static_cast<int32_t>(++step % 512));
          --it->second;
        }
        if (it->second == 0) {
          v1::FinishEvent* f = out.mutable_events()->add_finished();
          f->set_sequence(it->first);
          f->set_reason("length");
          it = left.erase(it);
        } else {
          ++it;
        }
      }
      if (out.has_events() && !stream->Write(out)) break;
      if (step % 50 == 0) {
        v1::WorkerMessage hb;
        hb.mutable_heartbeat()->set_step(++step);
        hb.mutable_heartbeat()->set_running(static_cast<int64_t>(left.size()));
        if (!stream->Write(hb)) break;
      }
      ++step;
    }
    stream->WritesDone();
    Drop();
    reader.join();
    (void)stream->Finish();
  }

  std::unique_ptr<v1::Cluster::Stub> stub_;
  const int rank_;
  const std::string launch_;
  std::mutex mu_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::atomic<bool> stop_{false}, attached_{false};
  std::thread thread_;  // last: starts once the rest is built
};

class Launch {
 public:
  Launch(std::shared_ptr<grpc::Channel> channel, const std::string& id) {
    for (int r = 0; r < kWorld; ++r) workers_.push_back(std::make_unique<FakeWorker>(channel, r, id));
  }
  FakeWorker& worker(int r) { return *workers_[r]; }

 private:
  std::vector<std::unique_ptr<FakeWorker>> workers_;
};

bool WaitServing(CoordinatorServer& server, milliseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (server.state().serving()) return true;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return false;
}

TEST(ServerConcurrency, StreamingClientsFakeWorkersADroppedStreamAndARelaunch) {
  CoordinatorOptions options;
  options.world_size = kWorld;
  options.max_queue = 32;
  options.heartbeat_interval = milliseconds(100);
  options.heartbeat_timeout = milliseconds(5000);
  ServerOptions server_options;
  server_options.listen = "127.0.0.1:0";
  server_options.register_timeout = milliseconds(30000);
  auto started = CoordinatorServer::Start(DAEDALUS_SOURCE_DIR "/cluster-configs/models/tiny", options, server_options);
  ASSERT_TRUE(started.ok()) << started.status();
  CoordinatorServer& server = **started;
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  auto launch = std::make_unique<Launch>(channel, "launch-1");
  ASSERT_TRUE(WaitServing(server, milliseconds(30000)));

  std::atomic<bool> done{false};
  std::atomic<int64_t> calls{0}, bad{0};
  std::mutex codes_mu;
  std::map<grpc::StatusCode, int64_t> codes;
  std::vector<std::thread> clients;
  for (int c = 0; c < 12; ++c) {
    clients.emplace_back([&, c] {
      auto stub = v1::Serving::NewStub(channel);
      std::mt19937 rng(c);
      while (!done) {
        v1::GenerateRequest r;
        r.set_id(std::to_string(c));
        for (int i = 0; i < 1 + static_cast<int>(rng() % 20); ++i) r.add_prompt_ids(static_cast<int32_t>(rng() % 512));
        r.set_max_new_tokens(1 + rng() % 40);
        if (rng() % 10 == 0) r.set_max_new_tokens(100000);  // over the context: INVALID_ARGUMENT
        grpc::ClientContext context;
        const int kind = static_cast<int>(rng() % 4);  // 0, 1: read to the end; 2: cancel; 3: short deadline
        context.set_deadline(std::chrono::system_clock::now() + (kind == 3 ? milliseconds(15) : milliseconds(20000)));
        auto reader = stub->Generate(&context, r);
        v1::GenerateResponse response;
        int64_t tokens = 0;
        bool finished = false;
        while (reader->Read(&response)) {
          tokens += response.tokens_size();
          if (!response.finish_reason().empty()) {
            finished = true;
            if (response.usage().completion_tokens() != tokens) ++bad;
          }
          if (kind == 2 && tokens >= 2) context.TryCancel();
        }
        const grpc::Status s = reader->Finish();
        ++calls;
        {
          std::lock_guard<std::mutex> lock(codes_mu);
          ++codes[s.error_code()];
        }
        switch (s.error_code()) {
          case grpc::StatusCode::OK:
            bad += !finished || tokens != r.max_new_tokens();
            break;
          case grpc::StatusCode::CANCELLED:
            bad += kind != 2;
            break;
          case grpc::StatusCode::DEADLINE_EXCEEDED:
            bad += kind != 3;
            break;
          case grpc::StatusCode::INVALID_ARGUMENT:
            bad += r.max_new_tokens() != 100000;
            break;
          case grpc::StatusCode::UNAVAILABLE:         // a worker was lost, or the cluster re-forms
          case grpc::StatusCode::RESOURCE_EXHAUSTED:  // queue limit, admission deadline
            break;
          default:
            ++bad;
        }
        if (s.error_code() == grpc::StatusCode::UNAVAILABLE) std::this_thread::sleep_for(milliseconds(5));
      }
    });
  }
  std::thread status_reader([&] {  // ClusterStatus beside the load
    auto stub = v1::Serving::NewStub(channel);
    while (!done) {
      grpc::ClientContext context;
      v1::ClusterStatusResponse status;
      (void)stub->ClusterStatus(&context, v1::ClusterStatusRequest{}, &status);
      std::this_thread::sleep_for(milliseconds(10));
    }
  });
  for (int round = 2; round <= 3; ++round) {
    std::this_thread::sleep_for(milliseconds(700));
    launch->worker(round % kWorld).Drop();  // a control stream breaks mid-load
    launch.reset();
    launch = std::make_unique<Launch>(channel, "launch-" + std::to_string(round));
    EXPECT_TRUE(WaitServing(server, milliseconds(30000))) << "round " << round;
  }
  std::this_thread::sleep_for(milliseconds(700));
  done = true;
  for (auto& t : clients) t.join();
  status_reader.join();
  launch.reset();
  server.Shutdown();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(codes[grpc::StatusCode::OK], 50);
  for (const auto& [code, n] : codes) std::printf("status %d: %lld calls\n", static_cast<int>(code), static_cast<long long>(n));
}

}  // namespace
}  // namespace daedalus
