//! Reading one line from a guest's channel without letting the guest make the agent hold more
//! than a bound.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line the agent reads from a guest: a guest cannot make the agent hold more.
pub const MAX_LINE: usize = 8 << 20;
/// What is kept of a longer line (to find whose answer it was).
pub const HEAD: usize = 4096;

/// One line from a guest.
#[derive(Debug, PartialEq)]
pub enum Line {
    Whole(Vec<u8>),
    /// Longer than the limit: its first bytes; the rest was read and dropped.
    TooLong(Vec<u8>),
}

/// Reads one line of at most `max` bytes (without its newline), holding no more than that
/// however long the line is; `None` at the end of the stream.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            if too_long {
                return Ok(Some(Line::TooLong(buf)));
            }
            return Ok((!buf.is_empty()).then_some(Line::Whole(buf)));
        }
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long && buf.len() + part.len() > max {
            too_long = true;
            let keep = HEAD.saturating_sub(buf.len().min(HEAD));
            buf.truncate(HEAD);
            buf.extend_from_slice(&part[..keep.min(part.len())]);
        } else if !too_long {
            buf.extend_from_slice(part);
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(if too_long { Line::TooLong(buf) } else { Line::Whole(buf) }));
        }
    }
}

/// The request id at the start of an answer (`{"...","id":N,...`), if it is there.
pub fn id_in(head: &[u8]) -> Option<u64> {
    let s = String::from_utf8_lossy(head);
    let at = s.find("\"id\":")? + 5;
    let digits: String = s[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn an_endless_line_is_bounded_and_the_next_answer_still_arrives() {
        // 40 MiB without a newline, then an ordinary answer: the reader keeps at most the
        // limit, says whose over-long answer it dropped, and goes on.
        let mut data = br#"{"exit_code":0,"id":41,"stdout":""#.to_vec();
        data.resize(40 << 20, b'x');
        data.extend_from_slice(b"\"}\n{\"id\":42,\"ok\":true}\n");
        let mut r = BufReader::with_capacity(64 * 1024, &data[..]);
        let first = read_line(&mut r, MAX_LINE).await.expect("read");
        match first {
            Some(Line::TooLong(head)) => {
                assert!(head.len() <= HEAD, "kept {} bytes of it", head.len());
                assert_eq!(id_in(&head), Some(41));
            }
            other => panic!("expected an over-long line, got {:?}", other.map(|_| "something else")),
        }
        let second = read_line(&mut r, MAX_LINE).await.expect("read");
        assert_eq!(second, Some(Line::Whole(br#"{"id":42,"ok":true}"#.to_vec())));
        assert_eq!(read_line(&mut r, MAX_LINE).await.expect("read"), None);
    }

    #[tokio::test]
    async fn lines_up_to_the_limit_are_whole() {
        let mut data = vec![b'a'; 100];
        data.push(b'\n');
        data.extend_from_slice(b"tail");
        let mut r = BufReader::with_capacity(7, &data[..]);
        assert_eq!(read_line(&mut r, 100).await.expect("read"), Some(Line::Whole(vec![b'a'; 100])));
        assert_eq!(read_line(&mut r, 100).await.expect("read"), Some(Line::Whole(b"tail".to_vec())));
    }
}
