// Crash points: where crash tests may kill the writer (writer.h, CrashPoint).
//
// The hook is a process-wide function pointer, not shared memory. It is set
// before the writes it should interrupt (set_crash_hook, from the thread that
// then writes, or before that thread starts), so a relaxed load is enough.
#pragma once

#include <atomic>

#include "larder/layout/sync.h"
#include "larder/writer/writer.h"

namespace larder::writer {

// Hidden: read in every slot write, so it must not cost a GOT load.
[[gnu::visibility("hidden")]] extern std::atomic<CrashHook> g_crash_hook;

inline void crash_point(CrashPoint point) {
  if (CrashHook hook = layout::sync::load_relaxed(g_crash_hook); hook != nullptr) [[unlikely]] {
    hook(point);
  }
}

}  // namespace larder::writer
