//! Framing: a fixed 12-byte little-endian header followed by a body.
//!
//! ```text
//! offset size field
//! 0      2    magic      b"YS"
//! 2      1    version    PROTOCOL_VERSION
//! 3      1    flags      bit 0: FLAG_RESPONSE (router -> client); other bits must be 0
//! 4      2    msg_type   u16 LE (see the message catalog)
//! 6      2    reserved   must be 0 (room for extensions)
//! 8      4    body_len   u32 LE, at most the decoder's frame_bytes_max - HEADER_LEN
//! 12     ...  body
//! ```
//!
//! `FrameDecoder` takes bytes as they arrive from a socket, in arbitrary pieces, and
//! yields whole frames without copying their bodies (`BytesMut::split_to` + `freeze`).
//! A header error is fatal for the stream: the caller answers with an error frame and
//! closes the connection, because the byte boundary of the next frame is unknown.

use bytes::{Buf, Bytes, BytesMut};

/// The two bytes every frame starts with.
pub const MAGIC: [u8; 2] = *b"YS";
/// The header's version byte this crate speaks; another is `unsupported_version`.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 12;
/// Flag bit 0: the frame goes router → client.
pub const FLAG_RESPONSE: u8 = 0x01;
/// Every flag bit defined; another set bit is `malformed_frame`.
pub const FLAGS_KNOWN: u8 = FLAG_RESPONSE;
/// Default hard limit on a whole frame (header + body), in bytes.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024;

/// The 12-byte header's fields (the magic and the reserved bytes are implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// [`PROTOCOL_VERSION`].
    pub version: u8,
    /// Flag bits ([`FLAG_RESPONSE`]).
    pub flags: u8,
    /// The message type (the catalog in `messages`).
    pub msg_type: u16,
    /// Bytes of the body after the header.
    pub body_len: u32,
}

/// One whole frame: its header and its body (a view of the received bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The parsed header.
    pub header: FrameHeader,
    /// The body, `header.body_len` bytes.
    pub body: Bytes,
}

/// Why a header was refused: fatal for the stream, whose next frame boundary is
/// then unknown (codes 0x0101..0x0104, `codes::of_frame_error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The first two bytes are not [`MAGIC`] (`bad_magic`).
    BadMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// The version byte is not [`PROTOCOL_VERSION`] (`unsupported_version`).
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// A flag bit outside [`FLAGS_KNOWN`] (`malformed_frame`).
    UnknownFlags {
        /// The flags byte found.
        flags: u8,
    },
    /// The reserved u16 is not 0 (`malformed_frame`).
    ReservedNotZero {
        /// The reserved value found.
        found: u16,
    },
    /// Header + body above the decoder's limit (`frame_too_large`).
    TooLarge {
        /// Bytes the frame would take, header included.
        frame_bytes: usize,
        /// The decoder's limit, bytes.
        frame_bytes_max: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadMagic { found } => {
                write!(f, "bad magic {:02x}{:02x}", found[0], found[1])
            }
            FrameError::UnsupportedVersion { found } => {
                write!(
                    f,
                    "unsupported protocol version {found} (this router speaks {PROTOCOL_VERSION})"
                )
            }
            FrameError::UnknownFlags { flags } => write!(f, "unknown flag bits {flags:#04x}"),
            FrameError::ReservedNotZero { found } => {
                write!(f, "reserved header field is {found:#06x}, must be 0")
            }
            FrameError::TooLarge {
                frame_bytes,
                frame_bytes_max,
            } => {
                write!(
                    f,
                    "frame of {frame_bytes} bytes is over the limit of {frame_bytes_max}"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

impl FrameHeader {
    /// A header of this crate's version; panics if `body_len` exceeds u32.
    pub fn new(msg_type: u16, flags: u8, body_len: usize) -> FrameHeader {
        assert!(body_len <= u32::MAX as usize);
        FrameHeader {
            version: PROTOCOL_VERSION,
            flags,
            msg_type,
            body_len: body_len as u32,
        }
    }

    /// Bytes of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }

    /// The 12 header bytes (magic, version, flags, type LE, reserved 0, length LE).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = self.version;
        out[3] = self.flags;
        out[4..6].copy_from_slice(&self.msg_type.to_le_bytes());
        // out[6..8] reserved, zero.
        out[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        out
    }

    /// Parses and validates a header; `frame_bytes_max` bounds header + body.
    pub fn decode(
        bytes: &[u8; HEADER_LEN],
        frame_bytes_max: usize,
    ) -> Result<FrameHeader, FrameError> {
        let magic = [bytes[0], bytes[1]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if bytes[2] != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { found: bytes[2] });
        }
        let flags = bytes[3];
        if flags & !FLAGS_KNOWN != 0 {
            return Err(FrameError::UnknownFlags { flags });
        }
        let reserved = u16::from_le_bytes([bytes[6], bytes[7]]);
        if reserved != 0 {
            return Err(FrameError::ReservedNotZero { found: reserved });
        }
        let msg_type = u16::from_le_bytes([bytes[4], bytes[5]]);
        let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let frame_bytes = HEADER_LEN.saturating_add(body_len as usize);
        if frame_bytes > frame_bytes_max {
            return Err(FrameError::TooLarge {
                frame_bytes,
                frame_bytes_max,
            });
        }
        Ok(FrameHeader {
            version: bytes[2],
            flags,
            msg_type,
            body_len,
        })
    }
}

/// Writes one frame (header + body) to `out`.
pub fn encode_frame(msg_type: u16, flags: u8, body: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader::new(msg_type, flags, body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
}

/// Splits a byte stream into frames. Bytes are appended with `extend` (or written
/// into `buffer_mut`), frames taken with `next_frame`.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    frame_bytes_max: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing frames above `frame_bytes_max` bytes (header included);
    /// panics below [`HEADER_LEN`].
    pub fn new(frame_bytes_max: usize) -> FrameDecoder {
        assert!(
            frame_bytes_max >= HEADER_LEN,
            "frame_bytes_max must hold a header"
        );
        FrameDecoder {
            buffer: BytesMut::new(),
            frame_bytes_max,
            failed: None,
        }
    }

    /// Its limit on a whole frame, bytes.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Appends bytes received from the stream, in any piece sizes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Returns the next whole frame, `Ok(None)` when more bytes are needed, or the
    /// stream's fatal error (sticky: every later call returns it again).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header_bytes = [0u8; HEADER_LEN];
        header_bytes.copy_from_slice(&self.buffer[..HEADER_LEN]);
        let header = match FrameHeader::decode(&header_bytes, self.frame_bytes_max) {
            Ok(header) => header,
            Err(error) => {
                self.failed = Some(error);
                return Err(error);
            }
        };
        let frame_len = header.frame_len();
        if self.buffer.len() < frame_len {
            self.buffer.reserve(frame_len - self.buffer.len());
            return Ok(None);
        }
        let before = self.buffer.len();
        self.buffer.advance(HEADER_LEN);
        let body = self.buffer.split_to(header.body_len as usize).freeze();
        debug_assert_eq!(before - frame_len, self.buffer.len());
        Ok(Some(Frame { header, body }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(msg_type: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(msg_type, 0, body, &mut out);
        out
    }

    #[test]
    fn splits_frames_arriving_byte_by_byte_and_many_per_read() {
        let mut stream = frame_bytes(7, b"hello");
        stream.extend(frame_bytes(8, b""));
        stream.extend(frame_bytes(9, &[1u8; 300]));
        for chunk in [1usize, 3, 12, 17, stream.len()] {
            let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.extend(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames.len(), 3);
            assert_eq!(&frames[0].body[..], b"hello");
            assert_eq!(frames[1].header.msg_type, 8);
            assert_eq!(frames[2].body.len(), 300);
            assert_eq!(decoder.buffered_len(), 0);
        }
    }

    #[test]
    fn header_errors_are_specific_and_sticky() {
        let good = frame_bytes(1, b"x");
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                {
                    let mut b = good.clone();
                    b[0] = b'X';
                    b
                },
                FrameError::BadMagic { found: *b"XS" },
            ),
            (
                {
                    let mut b = good.clone();
                    b[2] = 9;
                    b
                },
                FrameError::UnsupportedVersion { found: 9 },
            ),
            (
                {
                    let mut b = good.clone();
                    b[3] = 0x80;
                    b
                },
                FrameError::UnknownFlags { flags: 0x80 },
            ),
            (
                {
                    let mut b = good.clone();
                    b[6] = 1;
                    b
                },
                FrameError::ReservedNotZero { found: 1 },
            ),
            (
                {
                    let mut b = good.clone();
                    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                    b
                },
                FrameError::TooLarge {
                    frame_bytes: HEADER_LEN + u32::MAX as usize,
                    frame_bytes_max: 64,
                },
            ),
        ];
        for (bytes, expected) in cases {
            let mut decoder = FrameDecoder::new(64);
            decoder.extend(&bytes);
            assert_eq!(decoder.next_frame(), Err(expected));
            assert_eq!(decoder.next_frame(), Err(expected));
        }
    }

    #[test]
    fn truncated_frame_waits_for_more() {
        let bytes = frame_bytes(1, b"abcdef");
        let mut decoder = FrameDecoder::new(64);
        decoder.extend(&bytes[..bytes.len() - 1]);
        assert_eq!(decoder.next_frame(), Ok(None));
        decoder.extend(&bytes[bytes.len() - 1..]);
        assert!(decoder.next_frame().unwrap().is_some());
    }
}
