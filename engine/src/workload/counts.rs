//! Expected word counts, and checking a pipeline's output against them.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::{Error, Result, Workload};

/// The word counts a run of the workload must produce: for every word that occurs, how
/// often, sorted by word in byte order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedCounts {
    /// `(word, count)` with `count > 0`, sorted by word.
    entries: Vec<(String, u64)>,
    total_words: u64,
    text_bytes: u64,
}

impl ExpectedCounts {
    /// The counts of a workload's ranks (`counts[r]` = occurrences of rank `r`).
    pub(crate) fn from_rank_counts(workload: &Workload, counts: &[u64]) -> Self {
        let mut entries: Vec<(String, u64)> = workload
            .words()
            .zip(counts)
            .filter(|&(_, &count)| count > 0)
            .map(|(word, &count)| (word.to_owned(), count))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let total_words = counts.iter().sum();
        // Every word is followed by one byte: a space, or the line's `\n`.
        let text_bytes = workload
            .words()
            .zip(counts)
            .map(|(word, &count)| count * (word.len() as u64 + 1))
            .sum();
        Self {
            entries,
            total_words,
            text_bytes,
        }
    }

    /// `(word, count)` for every word that occurs, sorted by word in byte order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(|(w, c)| (w.as_str(), *c))
    }

    /// The number of distinct words that occur.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no word occurs (a run of zero lines).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The count of `word` (`None` if it does not occur).
    pub fn get(&self, word: &str) -> Option<u64> {
        self.entries
            .binary_search_by(|(w, _)| w.as_bytes().cmp(word.as_bytes()))
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// All words of the run: `lines * words_per_line`.
    pub fn total_words(&self) -> u64 {
        self.total_words
    }

    /// The size of the run's text in bytes, `\n`s included.
    pub fn text_bytes(&self) -> u64 {
        self.text_bytes
    }

    /// The `n` most frequent words, most frequent first (ties in byte order).
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.iter().collect();
        all.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        all.truncate(n);
        all
    }

    /// Writes `word\tcount\n` lines, sorted by word: the format of the expected-counts files.
    pub fn write_tsv<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        let mut line = Vec::with_capacity(32);
        for (word, count) in self.iter() {
            line.clear();
            line.extend_from_slice(word.as_bytes());
            line.push(b'\t');
            line.extend_from_slice(count.to_string().as_bytes());
            line.push(b'\n');
            out.write_all(&line)?;
        }
        Ok(())
    }

    /// The TSV text of [`write_tsv`](Self::write_tsv) in memory.
    pub fn to_tsv(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 16);
        // Writing into a Vec cannot fail.
        let _ = self.write_tsv(&mut out);
        out
    }

    /// Writes the TSV to `path` atomically: a temporary file next to it, synced, renamed
    /// over `path`, and the directory synced, so a reader sees the old file or the complete
    /// new one.
    pub fn write_tsv_file(&self, path: &Path) -> Result<()> {
        let with_path = |source| Error::WriteFile {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let write = || -> io::Result<()> {
            let mut file = BufWriter::new(File::create(&tmp)?);
            self.write_tsv(&mut file)?;
            file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            // Best effort: do not leave the temporary file behind.
            let _ = fs::remove_file(&tmp);
            with_path(e)
        })
    }

    /// Checks a pipeline's output (`word\tcount\n` lines sorted by word, as the files
    /// are) against these counts, byte for byte, and says where they first differ.
    pub fn verify_tsv(&self, actual: &[u8]) -> std::result::Result<(), CountsMismatch> {
        let expected = self.to_tsv();
        if expected == actual {
            return Ok(());
        }
        let mut expected_lines = expected.split_inclusive(|&b| b == b'\n');
        let mut actual_lines = actual.split_inclusive(|&b| b == b'\n');
        let mut line = 1;
        loop {
            match (expected_lines.next(), actual_lines.next()) {
                (Some(e), Some(a)) if e == a => line += 1,
                (e, a) => {
                    let show = |l: Option<&[u8]>| {
                        l.map(|l| String::from_utf8_lossy(l).trim_end_matches('\n').to_owned())
                    };
                    return Err(CountsMismatch {
                        line,
                        expected: show(e),
                        actual: show(a),
                    });
                }
            }
        }
    }
}

/// Where a pipeline's counts first differ from the expected counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountsMismatch {
    /// The 1-based line number of the first difference.
    pub line: u64,
    /// The expected line there (`None`: the output has extra lines).
    pub expected: Option<String>,
    /// The output's line there (`None`: the output ends early).
    pub actual: Option<String>,
}

impl fmt::Display for CountsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |l: &Option<String>| match l {
            Some(l) => format!("{l:?}"),
            None => "end of file".to_owned(),
        };
        write!(
            f,
            "counts differ at line {}: expected {}, got {}",
            self.line,
            show(&self.expected),
            show(&self.actual)
        )
    }
}

impl std::error::Error for CountsMismatch {}

#[cfg(test)]
mod tests {
    use super::super::WorkloadSpec;
    use super::*;

    fn counts() -> ExpectedCounts {
        Workload::new(WorkloadSpec::new(500, 4).with_vocab_size(50))
            .unwrap()
            .expected_counts(1)
    }

    #[test]
    fn verify_accepts_its_own_tsv_and_names_the_first_difference() {
        let expected = counts();
        let tsv = expected.to_tsv();
        assert_eq!(expected.verify_tsv(&tsv), Ok(()));

        let text = String::from_utf8(tsv.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let (word, count) = lines[2].split_once('\t').unwrap();
        let changed = text.replacen(
            lines[2],
            &format!("{word}\t{}", count.parse::<u64>().unwrap() + 1),
            1,
        );
        let err = expected.verify_tsv(changed.as_bytes()).unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.expected.as_deref(), Some(lines[2]));

        let err = expected.verify_tsv(&tsv[..tsv.len() - 1]).unwrap_err();
        assert_eq!(err.line, lines.len() as u64);
        let err = expected.verify_tsv(b"").unwrap_err();
        assert_eq!((err.line, err.actual), (1, None));
        let mut longer = tsv.clone();
        longer.extend_from_slice(b"zzz\t1\n");
        let err = expected.verify_tsv(&longer).unwrap_err();
        assert_eq!(
            (err.expected, err.actual.as_deref()),
            (None, Some("zzz\t1"))
        );
    }

    #[test]
    fn totals_agree_with_the_entries() {
        let expected = counts();
        assert_eq!(expected.total_words(), 2_000);
        assert_eq!(expected.iter().map(|(_, c)| c).sum::<u64>(), 2_000);
        let top = expected.top(3);
        assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
        assert_eq!(expected.get(top[0].0), Some(top[0].1));
        assert_eq!(expected.get("no such word"), None);
    }

    #[test]
    fn tsv_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("expected.tsv");
        let expected = counts();
        expected.write_tsv_file(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), expected.to_tsv());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        let err = expected
            .write_tsv_file(&dir.path().join("missing/expected.tsv"))
            .unwrap_err();
        assert!(err.to_string().contains("missing/expected.tsv"), "{err}");
    }
}
