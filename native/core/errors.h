// errors.h: the one exception type native code throws. The binding's guard turns it into the JS
// error class named by its code (lib/errors.ts); native code never exits, aborts or prints.
#pragma once
#include <stdexcept>
#include <string>

namespace duat {

enum ErrorCode {
  ERROR_ARGUMENT = 0,  // a value out of range or of the wrong kind
  ERROR_SHAPE,         // shapes that do not fit the op
  ERROR_DTYPE,         // float32 where int32 is needed, or the reverse
  ERROR_DEVICE,        // tensors on different devices, or CUDA unavailable
  ERROR_DISPOSED,      // a tensor used after dispose()
  ERROR_OUT_OF_MEMORY, // an allocation failed
  ERROR_CHECKPOINT,    // a file that cannot be read as what it claims to be
  ERROR_STATE,         // an op called at the wrong time (backward twice through a freed graph)
  ERROR_DISTRIBUTED,   // no usable MPI, or a collective called outside a distributed job
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void fail(ErrorCode code, const std::string& message) { throw Error(code, message); }

}  // namespace duat

// Fails with `code` and `message` unless `ok`. A macro, so that the message (often names and
// shapes joined into a string) is built only when the check fails: built on every call, the
// messages of a batch-1 forward's checks cost about a tenth of its time.
#define DUAT_CHECK(ok, code, message)                             \
  do {                                                            \
    if (!(ok)) ::duat::fail((code), (message));                   \
  } while (false)
