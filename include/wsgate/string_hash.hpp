#pragma once
// Lets unordered containers keyed by std::string be searched with a
// std::string_view, without building a std::string per lookup.
#include <cstddef>
#include <functional>
#include <string_view>

namespace wsgate {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

}  // namespace wsgate
