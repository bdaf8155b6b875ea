//! Length-prefixed frames and the single bincode configuration.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload, a
//! bincode-encoded message. The length is checked against a cap before any
//! buffer is allocated; decoding uses a byte limit and rejects trailing bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::limits::MAX_FRAME_LEN;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// The one bincode configuration of the protocol: varint integers, little
/// endian, and a byte limit so that a claimed length can never drive an
/// allocation larger than a frame.
pub fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("message has {extra} unexpected trailing bytes")]
    TrailingBytes { extra: usize },
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; LEN_PREFIX];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[..LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads a length prefix and checks it against `max` before anything is allocated.
pub fn parse_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one payload (without its prefix); every byte must be used.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(msg)
}

/// Tries to take one whole frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the message and the
/// number of bytes consumed. This is the synchronous core of the async
/// reader, used by the fuzz targets and the split-at-every-offset tests.
pub fn try_decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let mut prefix = [0u8; LEN_PREFIX];
    prefix.copy_from_slice(&buf[..LEN_PREFIX]);
    let len = parse_len(prefix, max)?;
    if buf.len() < LEN_PREFIX + len {
        return Ok(None);
    }
    let msg = decode_payload(&buf[LEN_PREFIX..LEN_PREFIX + len])?;
    Ok(Some((msg, LEN_PREFIX + len)))
}
