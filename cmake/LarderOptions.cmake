# Warnings and sanitizers for Larder's own targets: larder_apply_options(tgt).
add_library(larder_options INTERFACE)
target_compile_options(larder_options INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wno-missing-field-initializers
  $<$<BOOL:${LARDER_WERROR}>:-Werror>)

if(LARDER_SANITIZE)
  string(REPLACE "," ";" _larder_sanitizers "${LARDER_SANITIZE}")
  foreach(s IN LISTS _larder_sanitizers)
    if(NOT s MATCHES "^(address|thread|undefined)$")
      message(FATAL_ERROR "LARDER_SANITIZE: unknown sanitizer '${s}' (address, thread, undefined)")
    endif()
  endforeach()
  add_compile_options(-fsanitize=${LARDER_SANITIZE} -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${LARDER_SANITIZE})
  if(LARDER_SANITIZE MATCHES "undefined")
    add_compile_options(-fno-sanitize-recover=undefined)
  endif()
  if(LARDER_SANITIZE MATCHES "thread")
    # Standalone fences are replaced under TSAN (see layout/sync.h); make any
    # that remain an error rather than a silent blind spot.
    add_compile_options(-Werror=tsan)
  endif()
endif()
