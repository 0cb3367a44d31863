// How both UCX users here open UCP (the data plane's tagged messages, the KV transfer's RMA):
// a context with `features` (UCP_FEATURE_*), one worker driven by a single thread, and its
// address to publish. Includes UCX's header: for the ucx_*.cc files only.
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace daedalus {

// Fills `context`, `worker` and `address`; on error, what was opened stays in them for the
// caller's destructor to close. `what` names the user in errors.
// `tls`, where not null, is the UCX_TLS value used when the environment sets none (the user's
// UCX_TLS always wins).
absl::Status OpenUcpWorker(uint64_t features, const char* what, ucp_context_h& context, ucp_worker_h& worker,
                           std::string& address, const char* tls = nullptr);

// The data plane's (UcxTransport's): tagged messages, over any wire but UCX's shared-memory
// FIFOs unless UCX_TLS names them (a peer killed while writing into one silences its reader:
// ucp_worker.cc).
absl::Status OpenDataPlaneWorker(ucp_context_h& context, ucp_worker_h& worker, std::string& address);

}  // namespace daedalus
