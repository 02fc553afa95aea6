// The process's uext mappings by address: fault handlers find the mapping
// an address belongs to, and read()/write() learn whether a user buffer
// lies in one (then they copy through a buffer of their own before taking
// any lock, so that a fault on it never waits for a lock its own thread
// holds: docs/DESIGN.md, "Lock order").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace uext::vm {

class MapState;

void registry_add(uintptr_t start, size_t length, std::shared_ptr<MapState> state);
void registry_remove(uintptr_t start);
// The mapping holding `address`, or null.
std::shared_ptr<MapState> registry_find(uintptr_t address);
// Whether [p, p + length) overlaps any uext mapping.
bool in_mapping(const void* p, size_t length);

}  // namespace uext::vm
