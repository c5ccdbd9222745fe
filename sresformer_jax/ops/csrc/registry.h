// The one list of this library's XLA FFI handlers.  Every handler is defined with SRESFORMER_HANDLER, which
// also adds it to the list; ops/kernels.py reads the list through the C functions below and registers every
// entry with jax.ffi as "sresformer_<name>".  No name is written anywhere else.
#pragma once

#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace sresformer {

struct Target {
  const char* name;
  XLA_FFI_Handler* handler;
};

// Filled by the static registrars of every translation unit before the library's loader returns.
inline std::vector<Target>& targets() {
  static std::vector<Target> list;
  return list;
}

struct Registrar {
  Registrar(const char* name, XLA_FFI_Handler* handler) { targets().push_back({name, handler}); }
};

}  // namespace sresformer

// XLA_FFI_DEFINE_HANDLER_SYMBOL, and the handler's entry in the list.
#define SRESFORMER_HANDLER(NAME, IMPL, BINDING)    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, IMPL, BINDING); \
  static const sresformer::Registrar NAME##_registrar(#NAME, NAME)

// Defined once, in event_conv.cc.
extern "C" int64_t sresformer_num_targets();
extern "C" const char* sresformer_target_name(int64_t i);
extern "C" void* sresformer_target_handler(int64_t i);
