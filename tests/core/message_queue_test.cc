// MessageQueue: messages come out in order, Pop waits for one or for the close, a closed queue
// is drained before Pop reports the end, and a push after the close is refused.
#include "core/message_queue.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace daedalus {
namespace {

using std::chrono::milliseconds;

TEST(MessageQueue, InOrderAcrossThreads) {
  MessageQueue<int> q;
  std::thread producer([&] {
    for (int i = 0; i < 1000; ++i) q.Push(i);
    q.Close("done");
  });
  for (int want = 0; want < 1000; ++want) {
    auto got = q.Pop(milliseconds(5000));
    ASSERT_TRUE(got.has_value()) << want;
    ASSERT_EQ(*got, want);
  }
  producer.join();
  EXPECT_FALSE(q.Pop(milliseconds(0)).has_value());
  EXPECT_TRUE(q.closed());
  EXPECT_EQ(q.close_reason(), "done");
}

TEST(MessageQueue, PopWaitsForTheCloseAndDrainsFirst) {
  MessageQueue<std::string> q;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(q.Pop(milliseconds(30)).has_value());  // nothing: waits out its time
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(30));
  ASSERT_TRUE(q.Push("a"));
  q.Close("first");
  q.Close("second");  // the first reason stays
  EXPECT_FALSE(q.Push("b"));
  EXPECT_EQ(q.Pop(milliseconds(0)), "a");
  std::thread closer([&] { q.Close("late"); });
  EXPECT_FALSE(q.Pop(milliseconds(5000)).has_value());  // closed and drained: at once
  closer.join();
  EXPECT_EQ(q.close_reason(), "first");
}

TEST(MessageQueue, APopInWaitWakesOnPushAndOnClose) {
  MessageQueue<int> q;
  std::thread pusher([&] {
    std::this_thread::sleep_for(milliseconds(20));
    q.Push(7);
  });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(q.Pop(milliseconds(10000)), 7);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(5000));
  pusher.join();
  std::thread closer([&] {
    std::this_thread::sleep_for(milliseconds(20));
    q.Close("bye");
  });
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_FALSE(q.Pop(milliseconds(10000)).has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t1, milliseconds(5000));
  closer.join();
}

}  // namespace
}  // namespace daedalus
