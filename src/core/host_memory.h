// Host buffers that give their memory back to the OS while they hold only zeros.
#pragma once
#include <cstddef>

namespace oar {

// data[0, bytes) = 0. Its whole pages go back to the OS (madvise MADV_DONTNEED) and come back as zero pages when next
// touched, so a buffer that waits empty (a gradient another rank owns, under sharding stage2) costs no resident
// memory; the partial pages at either end are zeroed in place. The memory must be private and anonymous (the heap,
// Storage::allocate, mmap's anonymous pages): a private file mapping would read back the file.
void zero_and_release(void* data, size_t bytes);

}  // namespace oar
