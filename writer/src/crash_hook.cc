#include "crash_hook.h"

namespace larder {

std::atomic<CrashHook> writer::g_crash_hook{nullptr};

void set_crash_hook(CrashHook hook) { layout::sync::store_release(writer::g_crash_hook, hook); }

}  // namespace larder
