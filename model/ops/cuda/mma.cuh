// PTX wrappers the tensor-core kernels share (sm_80+): shared-memory addresses, cp.async copies,
// ldmatrix fragment loads and the m16n8k16 MMA with fp32 accumulation. Device code only, and only
// under nvcc (the CPU emulation in cuda_build_test.py compiles the CUDA-core kernels alone).
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, q = lane % 4), as the kernels use them:
//   A (16 x 16, row-major): regs 0..3 = A[g][2q..2q+1], A[g+8][2q..], A[g][8+2q..], A[g+8][8+2q..]
//   B (16 x 8):             regs 0..1 = B[2q..2q+1][g], B[8+2q..8+2q+1][g]
//   C / D (16 x 8, fp32):   d[0..1] = C[g][2q..2q+1], d[2..3] = C[g+8][2q..2q+1]
// ldmatrix loads 8x8 b16 matrices whose 8 row addresses come from 8 lanes (lanes 0-7 the first
// matrix, 8-15 the second, ...); thread t receives row t/4, elements 2(t%4)..+1 of each — or, with
// .trans, column t/4, rows 2(t%4)..+1 — which is exactly the layout above for the right matrix.
#ifndef SEEKLINE_OPS_CUDA_MMA_CUH_
#define SEEKLINE_OPS_CUDA_MMA_CUH_

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace seekline {

__device__ __forceinline__ unsigned SmemAddr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously (both 16-byte aligned).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(SmemAddr(smem)), "l"(gmem));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

__device__ __forceinline__ void LdMatrixX4(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LdMatrixX4Trans(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LdMatrixX2(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LdMatrixX2Trans(unsigned* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(SmemAddr(p)));
}

// d (16x8 fp32) += a (16x16) · b (16x8).
template <typename T>
__device__ __forceinline__ void Mma16816(float* d, const unsigned* a, const unsigned* b);
template <>
__device__ __forceinline__ void Mma16816<__nv_bfloat16>(float* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void Mma16816<__half>(float* d, const unsigned* a, const unsigned* b) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

}  // namespace seekline

#endif  // __CUDACC__
#endif  // SEEKLINE_OPS_CUDA_MMA_CUH_
