#include "support/regex.h"

#include <regex>

namespace uext::testing {

struct Regex::Compiled {
  std::regex re;
};

namespace {

void fill(const std::smatch& sm, std::vector<RegexGroup>& groups) {
  groups.clear();
  groups.reserve(sm.size());
  for (const auto& sub : sm) {
    RegexGroup g;
    g.assign(sub.str());
    g.matched = sub.matched;
    groups.push_back(std::move(g));
  }
}

}  // namespace

const RegexGroup& RegexMatch::operator[](size_t i) const {
  static const RegexGroup unmatched;
  return i < groups_.size() ? groups_[i] : unmatched;
}

Regex::Regex(const std::string& pattern) : compiled_(std::make_shared<Compiled>(Compiled{std::regex(pattern)})) {}

bool Regex::search(const std::string& text, RegexMatch* m) const {
  std::smatch sm;
  if (!std::regex_search(text, sm, compiled_->re)) return false;
  if (m) fill(sm, m->groups_);
  return true;
}

bool Regex::match(const std::string& text, RegexMatch* m) const {
  std::smatch sm;
  if (!std::regex_match(text, sm, compiled_->re)) return false;
  if (m) fill(sm, m->groups_);
  return true;
}

std::vector<RegexMatch> Regex::find_all(const std::string& text) const {
  std::vector<RegexMatch> out;
  for (std::sregex_iterator it(text.begin(), text.end(), compiled_->re), end; it != end; ++it) {
    out.emplace_back();
    fill(*it, out.back().groups_);
  }
  return out;
}

}  // namespace uext::testing
