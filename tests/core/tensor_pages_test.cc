// A checkpoint tensor's pages in the process's memory: MapResidentPages maps them in at once (the
// embedding, read in place a row per token), ReleaseResidentPages drops them (tensors copied out
// at load). Both read through /proc/self/smaps: the resident size of the file's mapping.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "tests/core/smaps.h"

namespace daedalus {
namespace {

constexpr int64_t kRows = 1024, kCols = 512;  // 1 MiB of bf16

// A safetensors file of one bf16 tensor "t" [kRows, kCols].
std::string WriteTensor(const std::filesystem::path& dir) {
  const std::string header = "{\"t\":{\"dtype\":\"BF16\",\"shape\":[" + std::to_string(kRows) + "," +
                             std::to_string(kCols) + "],\"data_offsets\":[0," + std::to_string(kRows * kCols * 2) + "]}}";
  const uint64_t length = header.size();
  const std::string path = (dir / "t.safetensors").string();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << header;
  const std::vector<char> data(kRows * kCols * 2, 1);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  return path;
}

// Whether this kernel populates on request (Linux 5.14 and later), asked of a page of our own.
bool KernelPopulates() {
#ifdef MADV_POPULATE_READ
  void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  const bool ok = p != MAP_FAILED && madvise(p, 4096, MADV_POPULATE_READ) == 0;
  if (p != MAP_FAILED) munmap(p, 4096);
  return ok;
#else
  return false;
#endif
}

TEST(TensorPages, MappedInWholeThenReleased) {
  if (!KernelPopulates()) GTEST_SKIP() << "this kernel (or these headers) lack MADV_POPULATE_READ";
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("tensor_pages_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  auto file = SafetensorsFile::Open(WriteTensor(dir));
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo& t = (*file)->tensors().at("t");
  const long kb = static_cast<long>(t.nbytes / 1024);
  // Opening may map some of the file already (the header's fault maps its neighbours, or a
  // whole large folio of the page cache): start from none of the tensor mapped.
  t.ReleaseResidentPages();
  const long before = SmapsKbAround(t.data, "Rss");
  ASSERT_GE(before, 0) << "no mapping holds the tensor";
  ASSERT_LT(before, kb / 2) << "kB resident after ReleaseResidentPages";
  t.MapResidentPages();
  const long mapped = SmapsKbAround(t.data, "Rss");
  EXPECT_GE(mapped, kb) << "kB resident after MapResidentPages, of " << kb;
  t.ReleaseResidentPages();
  EXPECT_LT(SmapsKbAround(t.data, "Rss"), kb / 2) << "kB resident after ReleaseResidentPages again";
  file->reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace daedalus
