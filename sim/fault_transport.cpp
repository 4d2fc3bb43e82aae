#include "fault_transport.hpp"

#include <algorithm>

namespace wsgate::sim {

namespace {
std::string_view origin_of(std::string_view payload) { return payload.substr(0, payload.find('\n')); }
}  // namespace

FaultTransport::FaultTransport(Transport& inner, Rng rng, const BusFaults& faults)
    : inner_(inner), rng_(rng), faults_(faults) {
  inner_.set_sink(this);
}

FaultTransport::~FaultTransport() { inner_.set_sink(nullptr); }

PublishStatus FaultTransport::publish(std::string_view topic, std::string_view payload) {
  const PublishStatus st = cut_off_ ? PublishStatus::unavailable : inner_.publish(topic, payload);
  last_status_ = st;
  switch (st) {
    case PublishStatus::accepted:
    case PublishStatus::no_subscribers: ++counters_.published; break;
    case PublishStatus::backpressure: ++counters_.publish_backpressure; break;
    case PublishStatus::unavailable: ++counters_.publish_unavailable; break;
    default: ++counters_.publish_other_refused; break;
  }
  return st;
}

TransportState FaultTransport::state() const {
  return cut_off_ ? TransportState::disconnected : inner_.state();
}

// The inner transport delivers into on_transport_message, which holds or
// passes on; then whatever held message is due is released in order.
size_t FaultTransport::poll(uint64_t now_ms) {
  now_ms_ = now_ms;
  const uint64_t before = counters_.delivered;
  const TransportState st = state();
  if (st != reported_ && sink_) {
    reported_ = st;
    sink_->on_transport_state(st);
  }
  inner_.poll(now_ms);
  while (!held_.empty() && held_.top().release_ms <= now_ms) {
    // Moved out before delivery: the sink may not re-enter, but the queue's
    // top must not be referenced across a pop.
    Held h = std::move(const_cast<Held&>(held_.top()));
    held_.pop();
    deliver(h.topic, h.payload);
  }
  if (held_.empty()) origin_release_ms_.clear();
  return size_t(counters_.delivered - before);
}

void FaultTransport::on_transport_message(std::string_view topic, std::string_view payload) {
  ++counters_.received;
  if (cut_off_) {
    ++counters_.dropped_cut_off;
    return;
  }
  const bool dup = faults_.duplicate_ppm && rng_.chance_ppm(faults_.duplicate_ppm);
  if (faults_.delay_max_ms == 0 && !dup && held_.empty()) {
    deliver(topic, payload);  // the common case: no copy
    return;
  }
  hold(topic, payload, now_ms_);
  if (dup) {
    ++counters_.duplicated;
    hold(topic, payload, now_ms_);
  }
}

void FaultTransport::hold(std::string_view topic, std::string_view payload, uint64_t not_before_ms) {
  const uint64_t delay = faults_.delay_max_ms ? rng_.below(uint64_t(faults_.delay_max_ms) + 1) : 0;
  uint64_t release = not_before_ms + delay;
  const std::string_view origin = origin_of(payload);
  auto it = origin_release_ms_.find(origin);
  if (it == origin_release_ms_.end()) it = origin_release_ms_.emplace(std::string(origin), 0).first;
  release = std::max(release, it->second);
  it->second = release;
  held_.push(Held{release, hold_seq_++, std::string(topic), std::string(payload)});
}

void FaultTransport::deliver(std::string_view topic, std::string_view payload) {
  if (cut_off_) {  // cut while the message was in flight
    ++counters_.dropped_cut_off;
    return;
  }
  if (!sink_) return;
  ++counters_.delivered;
  if (!faults_.resequence_bug) {
    sink_->on_transport_message(topic, payload);
    return;
  }
  // The planted bug: "{origin}\n{seq}\n{body}" gets a fresh sequence number.
  const size_t a = payload.find('\n');
  const size_t b = a == std::string_view::npos ? a : payload.find('\n', a + 1);
  if (b == std::string_view::npos) {
    sink_->on_transport_message(topic, payload);
    return;
  }
  const std::string_view origin = payload.substr(0, a);
  auto it = resequence_counter_.find(origin);
  if (it == resequence_counter_.end()) it = resequence_counter_.emplace(std::string(origin), 0).first;
  scratch_.assign(origin).append("\n").append(std::to_string(++it->second)).append(payload.substr(b));
  sink_->on_transport_message(topic, scratch_);
}

}  // namespace wsgate::sim
