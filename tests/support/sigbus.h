// Touching memory that may raise SIGBUS (a uext mapping past the end of
// its file, or a store the filesystem refused): the access is undone and
// reported instead of killing the test.
#pragma once

#include <cstddef>
#include <cstdint>

namespace uext::testing {

// Installs the process's SIGBUS handler these helpers rely on.
void install_sigbus_handler();
// Fills [p, p + n) with `value`; false, with the faulting address, on SIGBUS.
bool try_fill(std::byte* p, std::byte value, size_t n, uintptr_t* fault = nullptr);
// Reads one byte; false on SIGBUS.
bool try_read(const std::byte* p, std::byte* out);

}  // namespace uext::testing
