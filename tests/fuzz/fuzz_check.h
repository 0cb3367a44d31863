// FUZZ_EXPECT: a property the code under test promised and broke aborts, so the fuzzer keeps
// the input as a crash.
#pragma once

#include <cstdio>
#include <cstdlib>

// A property the code under test promised and broke: a crash the fuzzer records.
#define FUZZ_EXPECT(cond)                                                       \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                             \
    }                                                                           \
  } while (0)
