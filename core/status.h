// Status helpers: errors are absl::Status values inside Daedalus.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define DAEDALUS_CONCAT_INNER(a, b) a##b
#define DAEDALUS_CONCAT(a, b) DAEDALUS_CONCAT_INNER(a, b)

// Returns from the current function when `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                      \
  do {                                             \
    ::absl::Status daedalus_status_ = (expr);      \
    if (!daedalus_status_.ok()) return daedalus_status_; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, MakeX())` unwraps a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(DAEDALUS_CONCAT(daedalus_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()

// For our own bugs, not for bad input: aborts with file and line.
#define DAEDALUS_CHECK(cond)                                                         \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)

#include <cstdio>
#include <cstdlib>
