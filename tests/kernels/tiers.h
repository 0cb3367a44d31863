// Runs a test once per CPU kernel tier (kernels/cpu_isa.h); a tier this machine lacks is
// reported as skipped with the CPU features it misses.
#pragma once

#include <string>

#include "gtest/gtest.h"
#include "kernels/cpu_isa.h"

namespace daedalus::testing {

class EachCpuTier : public ::testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override {
    saved_ = ActiveCpuIsa();
    const std::string missing = MissingCpuFeatures(GetParam());
    if (!missing.empty()) GTEST_SKIP() << "tier " << CpuIsaName(GetParam()) << " skipped: this CPU lacks " << missing;
    ASSERT_TRUE(SelectCpuIsa(GetParam()).ok());
  }
  void TearDown() override { (void)SelectCpuIsa(saved_); }

 private:
  CpuIsa saved_ = CpuIsa::kGeneric;
};

inline std::string TierName(const ::testing::TestParamInfo<CpuIsa>& info) { return CpuIsaName(info.param); }

#define DAEDALUS_EACH_CPU_TIER(suite)                                                                           \
  INSTANTIATE_TEST_SUITE_P(Tiers, suite,                                                                        \
                           ::testing::Values(CpuIsa::kGeneric, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, \
                                             CpuIsa::kAmx),                                                     \
                           ::daedalus::testing::TierName)

}  // namespace daedalus::testing
