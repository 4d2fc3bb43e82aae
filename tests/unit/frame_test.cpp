#include "wsgate/frame.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "wsgate/outbox.hpp"

namespace wsgate {
namespace {

TEST(Frame, HeaderLengthsFollowRfc6455Section5_2) {
  for (size_t n : {0u, 125u, 126u, 65535u, 65536u}) {
    FrameRef f = FrameRef::encode(Opcode::text, std::string(n, 'a'));
    ASSERT_EQ(f->size(), frame_header_bytes(n) + n);
    EXPECT_EQ(f->data()[0], 0x81);  // FIN + text, no mask
    const uint8_t len7 = f->data()[1];
    EXPECT_EQ(len7 & 0x80, 0);  // server frames are never masked (5.1)
    EXPECT_EQ(len7, n < 126 ? n : n <= 0xFFFF ? 126 : 127);
  }
}

// The codec round-trips both kinds of frame at every length boundary, and
// the decoder answers need_more for every strict prefix of a header.
TEST(FrameCodec, EncodeDecodeRoundTripServerAndClientHeaders) {
  const uint8_t key[4] = {0x11, 0x22, 0x33, 0x44};
  for (size_t n : {0u, 1u, 125u, 126u, 65535u, 65536u, 1u << 20}) {
    for (bool masked : {false, true}) {
      uint8_t hdr[any_frame_header_max_bytes];
      const size_t len = masked ? encode_masked_frame_header(hdr, Opcode::ping, n, key)
                                : encode_frame_header(hdr, Opcode::ping, n);
      ASSERT_EQ(len, frame_header_bytes(n, masked));
      for (size_t k = 0; k < len; ++k) {
        FrameHeader h;
        EXPECT_EQ(decode_frame_header(hdr, k, h), FrameHeaderStatus::need_more) << n << " " << k;
      }
      FrameHeader h;
      ASSERT_EQ(decode_frame_header(hdr, len, h), FrameHeaderStatus::complete);
      EXPECT_TRUE(h.fin);
      EXPECT_EQ(h.rsv, 0);
      EXPECT_EQ(h.opcode, uint8_t(Opcode::ping));
      EXPECT_EQ(h.masked, masked);
      EXPECT_EQ(h.payload_bytes, n);
      EXPECT_EQ(h.header_bytes, len);
      if (masked) {
        EXPECT_EQ(std::memcmp(h.mask_key, key, 4), 0);
      }
    }
  }
}

TEST(FrameCodec, MaskingIsItsOwnInverseAcrossSplitWrites) {
  const uint8_t key[4] = {1, 2, 3, 4};
  std::string text = "hello, masked world";
  std::string wire = text;
  auto* p = reinterpret_cast<uint8_t*>(wire.data());
  apply_frame_mask(p, 5, key);
  apply_frame_mask(p + 5, wire.size() - 5, key, 5);  // continues the key where it stopped
  EXPECT_NE(wire, text);
  apply_frame_mask(p, wire.size(), key);
  EXPECT_EQ(wire, text);
}

TEST(FrameCodec, FragmentAndRsvBitsAreReported) {
  const uint8_t key[4] = {};
  uint8_t hdr[any_frame_header_max_bytes];
  encode_masked_frame_header(hdr, Opcode::text, 3, key, /*fin=*/false);
  hdr[0] |= 0x40;  // RSV1
  FrameHeader h;
  ASSERT_EQ(decode_frame_header(hdr, 6, h), FrameHeaderStatus::complete);
  EXPECT_FALSE(h.fin);
  EXPECT_EQ(h.rsv, 4);
}

// RFC 6455 5.2: the minimal encoding, and the top bit of a 64-bit length
// clear; refused as soon as the length bytes are in, before the mask key.
TEST(FrameCodec, NonMinimalOrTopBitLengthsAreInvalidEarly) {
  FrameHeader h;
  const uint8_t ext16[] = {0x81, 0x80 | 126, 0x00, 125};
  EXPECT_EQ(decode_frame_header(ext16, 3, h), FrameHeaderStatus::need_more);
  EXPECT_EQ(decode_frame_header(ext16, 4, h), FrameHeaderStatus::invalid);
  const uint8_t ext64[] = {0x81, 127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  EXPECT_EQ(decode_frame_header(ext64, 10, h), FrameHeaderStatus::invalid);
  const uint8_t top[] = {0x81, 127, 0x80, 0, 0, 0, 0, 1, 0, 0};
  EXPECT_EQ(decode_frame_header(top, 10, h), FrameHeaderStatus::invalid);
}

TEST(Frame, BuilderPlacesTheHeaderRightBeforeAShorterPayload) {
  FrameBuilder b(70000);  // header slot sized for a 10-byte header
  b.append("hi");
  FrameRef f = b.finish();
  EXPECT_EQ(f->view(), std::string_view("\x81\x02hi", 4));
}

TEST(Frame, SharedReferencesFreeOnLastRelease) {
  FrameRef a = FrameRef::encode(Opcode::text, "x");
  {
    FrameRef b = a;
    FrameRef c = b;
    EXPECT_EQ(a->refs(), 3u);
  }
  EXPECT_EQ(a->refs(), 1u);
}

TEST(Outbox, GathersPartialWritesInOrder) {
  Outbox o;
  o.push(FrameRef::encode(Opcode::text, "abc"));
  o.push(FrameRef::encode(Opcode::text, "defg"));
  EXPECT_EQ(o.queued_bytes(), 11u);
  o.consume(3);  // header + 'a'
  ByteRange r[4];
  ASSERT_EQ(o.gather(r), 2u);
  EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(r[0].data), r[0].size), "bc");
  EXPECT_EQ(r[1].size, 6u);
  o.consume(8);
  EXPECT_TRUE(o.empty());
  EXPECT_EQ(o.queued_bytes(), 0u);
}

TEST(Outbox, GatherIsBoundedByTheRangesGiven) {
  Outbox o;
  FrameRef f = FrameRef::encode(Opcode::text, "x");
  for (int i = 0; i < 100; ++i) o.push(f);
  ByteRange r[8];
  EXPECT_EQ(o.gather(r), 8u);
  EXPECT_EQ(f->refs(), 101u);
  o.clear();
  EXPECT_EQ(f->refs(), 1u);
}

// Issue 7: queues are measured in memory. A 2-byte frame is a 32-byte
// allocation and a vector slot; counting its 2 wire bytes let a flood of
// tiny frames grow memory 20x past the limit.
TEST(Outbox, ChargesFramesTheirMemoryNotTheirWireBytes) {
  Outbox o;
  FrameRef pong = FrameRef::encode(Opcode::pong, "");
  ASSERT_EQ(pong->size(), 2u);
  EXPECT_GE(Outbox::charge_of(pong), 32u + 2 * sizeof(FrameRef));
  for (int i = 0; i < 10; ++i) o.push(FrameRef::copy_of(pong->data(), pong->size()));
  EXPECT_EQ(o.queued_bytes(), 20u);
  EXPECT_EQ(o.memory_bytes(), 10 * Outbox::charge_of(pong));
  o.consume(3);  // one whole frame and a byte of the next: that one still counts
  EXPECT_EQ(o.memory_bytes(), 9 * Outbox::charge_of(pong));
  o.clear();
  EXPECT_EQ(o.memory_bytes(), 0u);
}

// The node ledger counts a frame shared by many outboxes once, plus one slot
// per outbox; each outbox is charged the frame in full.
TEST(Outbox, LedgerCountsASharedFrameOnce) {
  QueueLedger ledger;
  std::vector<Outbox> boxes(100);
  for (Outbox& b : boxes) b.set_ledger(&ledger);
  FrameRef f = FrameRef::encode(Opcode::text, std::string(10000, 'x'));
  for (Outbox& b : boxes) b.push(f);
  EXPECT_EQ(ledger.bytes, f->memory_bytes() + 100 * Outbox::slot_bytes);
  EXPECT_EQ(boxes[0].memory_bytes(), Outbox::charge_of(f));
  for (size_t i = 0; i < 99; ++i) boxes[i].consume(boxes[i].queued_bytes());
  EXPECT_EQ(ledger.bytes, f->memory_bytes() + Outbox::slot_bytes);
  boxes[99].drop_unsent();
  EXPECT_EQ(ledger.bytes, 0u);
}

TEST(Outbox, PongIsReplacedUntilGatheredAndDroppedPongIsForgotten) {
  Outbox o;
  o.push(FrameRef::encode(Opcode::text, "a"));
  o.push_pong(FrameRef::encode(Opcode::pong, "1"));
  o.push(FrameRef::encode(Opcode::text, "b"));
  o.push_pong(FrameRef::encode(Opcode::pong, "22"));  // replaces "1" in place
  EXPECT_EQ(o.frame_count(), 3u);
  EXPECT_EQ(o.queued_bytes(), 3u + 4u + 3u);
  ByteRange r[8];
  ASSERT_EQ(o.gather(r), 3u);
  EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(r[1].data), r[1].size), std::string_view("\x8a\x02" "22", 4));
  o.push_pong(FrameRef::encode(Opcode::pong, "3"));  // "22" is in flight: a new one
  EXPECT_EQ(o.frame_count(), 4u);
  o.consume(o.queued_bytes() - 3);  // the socket took all but the new pong
  o.push_pong(FrameRef::encode(Opcode::pong, "4"));  // not gathered yet: replaced
  EXPECT_EQ(o.frame_count(), 1u);
  EXPECT_EQ(o.drop_unsent(), 3u);
  EXPECT_TRUE(o.empty());
  o.push_pong(FrameRef::encode(Opcode::pong, "5"));
  EXPECT_EQ(o.frame_count(), 1u);
}

}  // namespace
}  // namespace wsgate
