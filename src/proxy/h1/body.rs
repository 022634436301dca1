//! Message framing of the HTTP/1 engine: how long a body is, and where a chunked body ends.
//!
//! Bodies pass through byte for byte: a chunked body is forwarded with its chunk framing, so the
//! scanner only has to find the last byte of the message (RFC 9112 §7.1), not decode it.

/// How the end of a message body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304, or a request without one).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// The value of a `Content-Length` field, if it is a plain decimal number.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    SizeWs,
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    EndLf,
    Done,
}

/// Finds the end of a chunked body fed to it in pieces.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
}

/// A chunked body that is not well formed.
#[derive(Debug, PartialEq, Eq)]
pub struct BadChunk;

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size,
            size: 0,
            digits: 0,
        }
    }
}

impl Chunked {
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `data`, the next bytes of the body; returns how many of them belong to it (all of them
    /// until the last byte of the message is seen).
    #[cfg(test)]
    pub fn advance(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        self.advance_with(data, |_| {})
    }

    /// [`Chunked::advance`], handing the chunks' data (the decoded body) to `payload` as it goes.
    pub fn advance_with(
        &mut self,
        data: &[u8],
        mut payload: impl FnMut(&[u8]),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).ok_or(BadChunk)?;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(BadChunk);
                        }
                        self.size = self.size * 16 + u64::from(d);
                        State::Size
                    }
                    _ if self.digits == 0 => return Err(BadChunk),
                    b';' => State::Ext,
                    b' ' | b'\t' => State::SizeWs,
                    b'\r' => State::SizeLf,
                    _ => return Err(BadChunk),
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => State::SizeWs,
                    b';' => State::Ext,
                    b'\r' => State::SizeLf,
                    _ => return Err(BadChunk),
                },
                State::Ext => match b {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(BadChunk),
                    _ => State::Ext,
                },
                State::SizeLf if b == b'\n' => {
                    let size = std::mem::take(&mut self.size);
                    self.digits = 0;
                    if size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(size)
                    }
                }
                State::Data(left) => {
                    let n = left.min((data.len() - i) as u64);
                    payload(&data[i..i + n as usize]);
                    i += n as usize;
                    self.state = if n == left {
                        State::DataCr
                    } else {
                        State::Data(left - n)
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size,
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(BadChunk),
                    _ => State::Trailer,
                },
                State::Trailer => match b {
                    b'\n' => State::TrailerStart,
                    _ => State::Trailer,
                },
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
                _ => return Err(BadChunk),
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(body: &[u8], piece: usize) -> Result<(usize, bool), BadChunk> {
        let mut c = Chunked::default();
        let mut used = 0;
        for part in body.chunks(piece) {
            used += c.advance(part)?;
            if c.done() {
                break;
            }
        }
        Ok((used, c.done()))
    }

    #[test]
    fn finds_the_end_of_a_chunked_body_in_any_split() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for piece in 1..body.len() {
            assert_eq!(
                scan_in_pieces(body, piece),
                Ok((end, true)),
                "pieces of {piece}"
            );
        }
        assert_eq!(scan_in_pieces(b"0\r\n\r\n", 100), Ok((5, true)));
        assert_eq!(scan_in_pieces(b"4\r\nab", 100), Ok((5, false)));
    }

    #[test]
    fn hands_over_the_decoded_body_in_any_split() {
        let body = b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        for piece in 1..body.len() {
            let mut c = Chunked::default();
            let mut decoded = Vec::new();
            for part in body.chunks(piece) {
                c.advance_with(part, |d| decoded.extend_from_slice(d))
                    .unwrap();
            }
            assert!(c.done());
            assert_eq!(
                decoded, b"helloabcdefghijklmnopqrstuvwxyz",
                "pieces of {piece}"
            );
        }
    }

    #[test]
    fn refuses_malformed_chunks() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"ffffffffffffffff1\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(scan_in_pieces(bad, 100), Err(BadChunk), "{bad:?}");
        }
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"-1"), None);
        assert_eq!(parse_length(b"1 2"), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }
}
