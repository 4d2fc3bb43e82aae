#include "wsgate/frame.hpp"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace wsgate
