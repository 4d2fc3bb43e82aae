#pragma once
// Protocol v1 (DESIGN.md, "The wire protocol"): parsing one client text
// message, and the JSON shapes the server sends. `content` is kept as the
// exact bytes the client wrote, never re-serialised.
#include <cstdint>
#include <memory>
#include <string_view>

namespace wsgate {

enum class ClientMessageKind : uint8_t { ping, send_message, broadcast };

struct ClientMessage {
  ClientMessageKind kind;
  std::string_view target_user;  // send_message: unescaped; valid until next parse
  std::string_view content;      // raw JSON text of the value, byte for byte
};

// Either a message or the text of the error reply to send back.
struct ParseResult {
  bool ok = false;
  ClientMessage message{};
  std::string_view error;  // e.g. "Invalid JSON", "Missing field: target_user"
};

// Owns simdjson's parser and a padded scratch buffer sized for the largest
// message, so parsing allocates nothing after construction.
class MessageParser {
 public:
  explicit MessageParser(size_t max_message_bytes);
  ~MessageParser();
  ParseResult parse(std::string_view payload);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace wsgate
