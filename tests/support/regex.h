// Regular expressions for the tests that read the output of e2fsprogs,
// fio and the CLI. std::regex is a template that every file using it
// instantiates anew: about 4 s of compile time per file at -O1 and 8 s
// under ASan at -O0. Here it is compiled once, behind a small interface
// shaped like the standard one (std::regex's ECMAScript grammar).
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace uext::testing {

// One group of a match: its text, and whether it took part in the match
// (an optional group that did not is empty and unmatched).
struct RegexGroup : std::string {
  bool matched = false;
  std::string str() const { return *this; }
};

class RegexMatch {
 public:
  // Group i (0: the whole match); past the last group, an unmatched one.
  const RegexGroup& operator[](size_t i) const;
  size_t size() const { return groups_.size(); }
  bool empty() const { return groups_.empty(); }
  std::string str(size_t i = 0) const { return (*this)[i]; }

 private:
  friend class Regex;
  std::vector<RegexGroup> groups_;
};

class Regex {
 public:
  explicit Regex(const std::string& pattern);
  explicit Regex(const char* pattern) : Regex(std::string(pattern)) {}

  // Anywhere in `text` (std::regex_search) or all of it (std::regex_match).
  bool search(const std::string& text, RegexMatch* m) const;
  bool match(const std::string& text, RegexMatch* m) const;
  // Every non-overlapping match, left to right (std::sregex_iterator).
  std::vector<RegexMatch> find_all(const std::string& text) const;

 private:
  struct Compiled;
  std::shared_ptr<const Compiled> compiled_;
};

// The standard library's names, found by argument-dependent lookup.
inline bool regex_search(const std::string& text, RegexMatch& m, const Regex& re) { return re.search(text, &m); }
inline bool regex_search(const std::string& text, const Regex& re) { return re.search(text, nullptr); }
inline bool regex_match(const std::string& text, RegexMatch& m, const Regex& re) { return re.match(text, &m); }
inline bool regex_match(const std::string& text, const Regex& re) { return re.match(text, nullptr); }
inline std::vector<RegexMatch> regex_find_all(const std::string& text, const Regex& re) { return re.find_all(text); }

}  // namespace uext::testing
