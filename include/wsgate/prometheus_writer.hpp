#pragma once
// Writes the Prometheus text exposition format (0.0.4), every sample
// labelled with the node id: the one writer of /metrics, used by the core
// for its counters and by the driver for its own.
#include <cstdint>
#include <string>
#include <string_view>

namespace wsgate {

class PrometheusWriter {
 public:
  PrometheusWriter(std::string& out, std::string_view node_id) : out_(out), node_(node_id) {}
  // The # HELP and # TYPE lines of a metric; its samples follow.
  void header(std::string_view name, std::string_view type, std::string_view help);
  // One sample, optionally with one more label (our own enum names: not escaped).
  void sample(std::string_view name, uint64_t value, std::string_view label = {}, std::string_view label_value = {});
  // A metric with a single sample: header and sample.
  void metric(std::string_view name, std::string_view type, std::string_view help, uint64_t value) {
    header(name, type, help);
    sample(name, value);
  }

 private:
  std::string& out_;
  std::string_view node_;
};

}  // namespace wsgate
