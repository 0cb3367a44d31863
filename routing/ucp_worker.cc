#include "routing/ucp_worker.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace daedalus {

absl::Status OpenUcpWorker(uint64_t features, const char* what, ucp_context_h& context, ucp_worker_h& worker,
                           std::string& address, const char* tls) {
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return absl::InternalError(absl::StrCat("UCX configuration (", what, "): ", ucs_status_string(s)));
  }
  if (tls != nullptr && std::getenv("UCX_TLS") == nullptr) {
    if (ucs_status_t s = ucp_config_modify(config, "TLS", tls); s != UCS_OK) {
      ucp_config_release(config);
      return absl::InternalError(absl::StrCat("UCX configuration (", what, "): TLS=", tls, ": ", ucs_status_string(s)));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = features;
  const ucs_status_t s = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (s != UCS_OK) return absl::InternalError(absl::StrCat("ucp_init (", what, "): ", ucs_status_string(s)));
  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  if (ucs_status_t w = ucp_worker_create(context, &wp, &worker); w != UCS_OK) {
    return absl::InternalError(absl::StrCat("ucp_worker_create (", what, "): ", ucs_status_string(w)));
  }
  ucp_address_t* raw = nullptr;
  size_t length = 0;
  if (ucs_status_t a = ucp_worker_get_address(worker, &raw, &length); a != UCS_OK) {
    return absl::InternalError(absl::StrCat("ucp_worker_get_address (", what, "): ", ucs_status_string(a)));
  }
  address.assign(reinterpret_cast<const char*>(raw), length);
  ucp_worker_release_address(worker, raw);
  return absl::OkStatus();
}

// Not UCX's shared-memory FIFOs (`mm`: posix, sysv, xpmem) unless UCX_TLS asks for them: a
// peer killed while writing into a rank's receive FIFO leaves its slot unfinished, and the
// rank, which reads the FIFO in order, hears no one from then on (the likely cause of an
// elastic cluster on one host once losing its healthy survivor). UCX 1.13 here, three
// processes on raw tagged messages, one sending small ones to another without pause, killed by
// SIGKILL, then the third sending one: over posix or sysv the receiver never heard the third by
// the third kill (five tries); with the mm transports left out it always did (30 kills), and
// over posix too when the killed process had stopped sending (20). ucx_transport_test's
// KilledSenderDoesNotSilenceARank is the same through the transport. Ranks of one host talk
// over TCP loopback instead, large payloads read across processes in one copy (cma).
absl::Status OpenDataPlaneWorker(ucp_context_h& context, ucp_worker_h& worker, std::string& address) {
  return OpenUcpWorker(UCP_FEATURE_TAG, "data plane", context, worker, address, "^mm");
}

}  // namespace daedalus
