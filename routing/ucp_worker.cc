#include "routing/ucp_worker.h"

#include "absl/strings/str_cat.h"

namespace daedalus {

absl::Status OpenUcpWorker(uint64_t features, const char* what, ucp_context_h& context, ucp_worker_h& worker,
                           std::string& address) {
  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return absl::InternalError(absl::StrCat("UCX configuration (", what, "): ", ucs_status_string(s)));
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

}  // namespace daedalus
