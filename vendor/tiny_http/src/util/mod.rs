pub use self::custom_stream::CustomStream;
pub use self::equal_reader::EqualReader;
pub use self::fused_reader::FusedReader;
pub use self::messages_queue::MessagesQueue;
pub use self::refined_tcp_stream::RefinedTcpStream;
pub use self::sequential::{SequentialReader, SequentialReaderBuilder};
pub use self::sequential::{SequentialWriter, SequentialWriterBuilder};
pub use self::task_pool::TaskPool;

use std::str::FromStr;

mod custom_stream;
mod equal_reader;
mod fused_reader;
mod messages_queue;
pub(crate) mod refined_tcp_stream;
mod sequential;
mod task_pool;

/// Parses a the value of a header.
/// Suitable for `Accept-*`, `TE`, etc.
///
/// For example with `text/plain, image/png; q=1.5` this function would
/// return `[ ("text/plain", 1.0), ("image/png", 1.5) ]`
pub fn parse_header_value(input: &str) -> Vec<(&str, f32)> {
    input
        .split(',')
        .filter_map(|elem| {
            let mut params = elem.split(';');

            let t = params.next()?;

            let mut value = 1.0_f32;

            // Patched for baby-discord: a q-value is a number from 0 to 1;
            // anything else (NaN, inf, -1, 2.5, garbage) counts as 0, "not
            // acceptable", so every value is comparable and in range.
            for p in params {
                if p.trim_start().starts_with("q=") {
                    value = match f32::from_str(p.trim_start()[2..].trim()) {
                        Ok(val) if (0.0..=1.0).contains(&val) => val,
                        _ => 0.0,
                    };
                    break;
                }
            }

            Some((t.trim(), value))
        })
        .collect()
}

#[cfg(test)]
mod test {
    #[test]
    #[allow(clippy::float_cmp)]
    fn test_parse_header() {
        let result = super::parse_header_value("text/html, text/plain; q=0.5 , image/png ; q=2.0, a;q=NaN, b;q=x");

        assert_eq!(result.len(), 5);
        assert_eq!(result[0].0, "text/html");
        assert_eq!(result[0].1, 1.0);
        assert_eq!(result[1].0, "text/plain");
        assert_eq!(result[1].1, 0.5);
        assert_eq!(result[2].0, "image/png");
        assert_eq!(result[2].1, 0.0);
        assert_eq!(result[3].1, 0.0);
        assert_eq!(result[4].1, 0.0);
    }
}
