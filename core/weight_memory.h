// Memory for the weights the kernels stream, on transparent huge pages.
//
// A packed weight of a megabyte or so from malloc gets a mapping of its own, too small to hold
// one 2 MB huge page: every 4 KB of it costs a TLB entry and stops the hardware prefetchers.
// WeightBuffers are instead carved one after another from 2 MB-aligned blocks, advised for huge
// pages before anything touches them when the process asks for huge pages (HugePagesAsked). A
// block is unmapped with its last buffer, and a buffer freed before its neighbours gives back the
// whole huge pages inside it, so a routed expert's memory still goes with the expert.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace daedalus {

// The glibc tunable that makes malloc ask for huge pages; the CLI sets it to 1 when it starts
// (cli/huge_pages.h) unless DAEDALUS_HUGE_PAGES=off.
constexpr char kHugePagesTunable[] = "glibc.malloc.hugetlb";
// kHugePagesTunable's value in GLIBC_TUNABLES (its last setting), where this glibc reads it
// (2.35 on): 1, malloc advises transparent huge pages; 2, it maps reserved hugetlbfs pages; 0
// where unset or not read.
int HugePagesTunable();
// Whether this process asks the kernel for huge pages (a tunable value of 1 or 2): then weight
// blocks are advised for transparent huge pages too.
bool HugePagesAsked();

class WeightBuffer {
 public:
  WeightBuffer() = default;
  explicit WeightBuffer(size_t bytes);  // uninitialised; aligned to 64 bytes
  WeightBuffer(WeightBuffer&& other) noexcept;
  WeightBuffer& operator=(WeightBuffer&& other) noexcept;
  WeightBuffer(const WeightBuffer&) = delete;
  WeightBuffer& operator=(const WeightBuffer&) = delete;
  ~WeightBuffer();

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

  struct Block;  // one mapping, shared by the buffers carved from it

 private:
  void Release();
  std::shared_ptr<Block> block_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace daedalus
