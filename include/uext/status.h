// Error reporting for uext: every fallible call returns Result<T>.
//
// An Error carries an errno value (what a POSIX caller or the FUSE daemon
// returns) and a message that names the structure at fault, e.g.
// "inode 12: extent tree node at block 5301: bad magic 0x0000".
#pragma once

#include <cerrno>
#include <string>
#include <utility>
#include <variant>

namespace uext {

// Kernel ext4 names for the two corruption errnos.
inline constexpr int kErrCorrupted = EUCLEAN;   // EFSCORRUPTED
inline constexpr int kErrBadChecksum = EBADMSG; // EFSBADCRC

class Error {
 public:
  Error(int code, std::string message) : code_(code), message_(std::move(message)) {}

  int code() const { return code_; }
  const std::string& message() const { return message_; }

  // Prepends context ("inode 12: ") so the outermost caller's message says
  // where the failure was found as well as what it was.
  Error&& with_context(const std::string& context) && {
    message_ = context + ": " + message_;
    return std::move(*this);
  }

 private:
  int code_;
  std::string message_;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}

  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { return error_; }
  Error&& error() && { return std::move(error_); }

 private:
  Error error_{0, {}};
  bool failed_ = false;
};

using Status = Result<void>;

}  // namespace uext

#define UEXT_CONCAT_INNER(a, b) a##b
#define UEXT_CONCAT(a, b) UEXT_CONCAT_INNER(a, b)

// Returns the error of `expr` (a Result) from the enclosing function.
#define UEXT_TRY(expr)                                   \
  do {                                                   \
    auto uext_try_result_ = (expr);                      \
    if (!uext_try_result_.ok()) return std::move(uext_try_result_).error(); \
  } while (0)

// `lhs = value of expr`, or return its error.
#define UEXT_ASSIGN_OR_RETURN(lhs, expr) \
  UEXT_ASSIGN_OR_RETURN_IMPL(UEXT_CONCAT(uext_result_, __LINE__), lhs, expr)
#define UEXT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return std::move(tmp).error();    \
  lhs = std::move(tmp).value()
