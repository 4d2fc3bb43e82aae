#include "http_router.hpp"

namespace wsgate::server {

Route route_request(const RequestHead& head) {
  if (head.path == websocket_path) return Route::websocket;
  const bool get = head.method == "GET";
  if (head.path == "/health") return get ? Route::health : Route::method_not_allowed;
  if (head.path == "/ready") return get ? Route::ready : Route::method_not_allowed;
  if (head.path == "/metrics") return get ? Route::metrics : Route::method_not_allowed;
  return Route::not_found;
}

}  // namespace wsgate::server
