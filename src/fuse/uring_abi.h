// The kernel's FUSE-over-io_uring interface (Linux 6.14+, FUSE protocol
// 7.42), which Debian 12's <linux/fuse.h> (6.1) predates. Declared here
// from the kernel's uapi, with the layout checked below: these structures
// are shared with the kernel byte for byte.
#pragma once

#include <cstddef>
#include <cstdint>

namespace uext::fuse::uring_abi {

// In the INIT reply's 64 flags (flags | flags2 << 32): the server will serve
// requests through io_uring. The kernel takes flags2 only with FUSE_INIT_EXT.
inline constexpr uint64_t kOverIoUring = uint64_t{1} << 41;
inline constexpr uint32_t kInitExt = uint32_t{1} << 30;

// IORING_OP_URING_CMD sub-commands (sqe->cmd_op) on a /dev/fuse descriptor.
inline constexpr uint32_t kCmdRegister = 1;        // hand an entry's buffers to a queue
inline constexpr uint32_t kCmdCommitAndFetch = 2;  // answer the entry's request, wait for the next

inline constexpr size_t kInOutHeaderSize = 128;  // fuse_in_header in, fuse_out_header out
inline constexpr size_t kOpInSize = 128;         // the request's first argument (fuse_write_in, ...)

// Where the kernel says which request an entry holds and how much of the
// payload buffer it filled; the server says how much of it the reply fills.
struct EntInOut {
  uint64_t flags;
  uint64_t commit_id;   // the request's unique, to name in COMMIT_AND_FETCH
  uint32_t payload_sz;  // bytes of the payload buffer in use
  uint32_t padding;
  uint64_t reserved;
};

// An entry's header buffer: the first of the two iovecs given at REGISTER.
struct ReqHeader {
  char in_out[kInOutHeaderSize];
  char op_in[kOpInSize];
  EntInOut ent_in_out;
};

// The command area of a 128-byte SQE (sqe->cmd).
struct CmdReq {
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;  // the queue (CPU) the entry serves
  uint8_t padding[6];
};

static_assert(sizeof(EntInOut) == 32);
static_assert(offsetof(EntInOut, commit_id) == 8);
static_assert(offsetof(EntInOut, payload_sz) == 16);
static_assert(sizeof(ReqHeader) == 288);
static_assert(offsetof(ReqHeader, op_in) == 128);
static_assert(offsetof(ReqHeader, ent_in_out) == 256);
static_assert(sizeof(CmdReq) == 24);
static_assert(offsetof(CmdReq, commit_id) == 8);
static_assert(offsetof(CmdReq, qid) == 16);
static_assert(sizeof(CmdReq) <= 80, "must fit the command area of a 128-byte SQE");

}  // namespace uext::fuse::uring_abi
