//! What the `wal` benchmarks share: their command line. Each takes `--name value` options
//! after `cargo bench -p wal --bench NAME --`; an unknown option or a bad value stops the
//! benchmark with a message naming it (a typo must not silently run the defaults).

use std::time::Duration;

/// The `(--name, value)` pairs of the command line, without the `--bench` flag cargo adds.
pub fn args() -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bench" {
            continue;
        }
        let value = args
            .next()
            .unwrap_or_else(|| panic!("option {flag} needs a value"));
        pairs.push((flag, value));
    }
    pairs
}

/// A number, or a panic naming the option.
pub fn number<T: std::str::FromStr>(flag: &str, value: &str) -> T {
    value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{flag} {value:?}: not a number"))
}

/// Milliseconds.
pub fn millis(flag: &str, value: &str) -> Duration {
    Duration::from_millis(number(flag, value))
}

/// A comma-separated list of numbers.
pub fn list(flag: &str, value: &str) -> Vec<usize> {
    value.split(',').map(|x| number(flag, x)).collect()
}

/// An option the benchmark does not have.
pub fn unknown(flag: &str) -> ! {
    panic!("unknown option {flag} (see the options in the benchmark's doc comment)")
}
