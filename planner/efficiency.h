// The planner's efficiency factors: what fraction of a datasheet peak real kernels reach, and
// the fixed costs a roofline misses. One set for every plan; each value comes from a published
// kernel benchmark (or is a stated assumption), never from the deployments the planner is
// checked against. planner/README.md explains each one.
#pragma once

namespace daedalus {

struct Efficiency {
  // Dense and grouped GEMMs (projections, dense MLP, shared and routed experts), of the
  // device's dense FP8 or BF16 peak. DeepGEMM on H800: grouped contiguous-layout FP8 GEMMs
  // 1,093-1,297 of 1,979 TFLOPS (0.55-0.66); 0.60 is the middle.
  double gemm = 0.60;
  // Core attention FLOPs, of the dense BF16 peak. FlashMLA on H800 SXM5: 660 of 989 TFLOPS
  // when compute-bound. Used for absorbed decode and for naive (decompressed) prefill.
  double attention = 0.67;
  // Streaming reads from device memory (weights, latent KV cache), of the peak bandwidth.
  // FlashMLA on H800 SXM5: 3,000 of 3,350 GB/s when memory-bound.
  double memory_bandwidth = 0.90;
  // Intra-node link (NVLink), of the per-direction peak. DeepEP normal kernels on H800:
  // 153-158 GB/s of 200 GB/s each way.
  double intra_node_link = 0.78;
  // NIC, node-deduplicated all-to-all (DeepEP normal kernels, used for prefill): DeepEP reports
  // 51-58 GB/s at EP32-EP64 counting bytes to every node including the sender's own; on the
  // bytes that really cross the NIC that is ~44 GB/s of 50.
  double nic_normal = 0.88;
  // NIC, per-expert all-to-all (DeepEP low-latency kernels, used for decode): 39-40 GB/s of
  // 50 at EP128-EP256. Together with `all_to_all_overhead_s` this reproduces DeepEP's
  // low-latency table from EP16 to EP256 within ~10%.
  double nic_low_latency = 0.80;
  // Fixed cost of one dispatch or combine call beyond the wire time and the NIC latency:
  // launch, notify and completion polling (fitted to the same DeepEP low-latency table).
  double all_to_all_overhead_s = 18e-6;
  // Two-micro-batch overlap: the fraction of the shorter of computation and communication
  // that hides under the longer. SGLang's two-batch-overlap ablation measured +27-35% in
  // prefill, which is 0.5 in this model on DeepSeek's prefill unit; its decode figure (+25.5%
  // at 256 sequences per device) would ask for ~0.75, because the model's one-micro-batch
  // decode step comes out ~10% faster than SGLang measured. One value for both.
  double overlap = 0.5;
  // Non-GEMM kernels per layer and micro-batch (norms, RoPE, cache writes, gate top-k,
  // activation quantisation, SiLU): about a dozen small kernels of ~3 us under CUDA graphs.
  // An assumption; it matters only for small decode batches.
  double layer_overhead_s = 40e-6;
  // Device memory kept free for the runtime: CUDA context, allocator fragmentation, library
  // workspaces (serving engines default to using 0.88-0.92 of device memory).
  double reserved_memory_fraction = 0.08;
};

}  // namespace daedalus
