//! Recovery end to end: a directory of arbitrary segment files (some built from valid
//! records, then damaged) is analysed and opened on the simulated page cache. Opening never
//! panics; it either refuses with an error or yields a log whose every record verifies.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wal::format::{SegmentHeader, encode_record};
use wal::fs::{Dir, SimDir};
use wal::store::DirSegmentStore;
use wal::{Config, Lsn, SegmentId, Wal};

#[derive(Debug, Arbitrary)]
struct File<'a> {
    id: u8,
    content: Content<'a>,
}

#[derive(Debug, Arbitrary)]
enum Content<'a> {
    Raw(&'a [u8]),
    Valid { base_lsn: u8, records: Vec<&'a [u8]>, cut: Option<u16>, flip: Option<(u16, u8)> },
}

fuzz_target!(|files: Vec<File<'_>>| {
    let sim = SimDir::new();
    for file in files.iter().take(8) {
        let id = SegmentId::new(u64::from(file.id).max(1));
        let name = DirSegmentStore::file_name(id);
        let bytes = match &file.content {
            Content::Raw(bytes) => bytes.to_vec(),
            Content::Valid { base_lsn, records, cut, flip } => {
                let base = Lsn::new(u64::from(*base_lsn).max(1));
                let mut out = SegmentHeader { segment_id: id, base_lsn: base }.encode().to_vec();
                for (i, payload) in records.iter().enumerate() {
                    encode_record(&mut out, id, Lsn::new(base.get() + i as u64), payload);
                }
                if let Some((at, mask)) = flip {
                    let at = usize::from(*at) % out.len();
                    out[at] ^= mask;
                }
                if let Some(cut) = cut {
                    out.truncate(usize::from(*cut).min(out.len()));
                }
                out
            }
        };
        let _ = sim.handle().remove(&name);
        let mut f = sim.handle().create_new(&name).expect("create");
        f.write_all(&bytes).expect("write");
        f.sync_data().expect("sync");
    }
    sim.handle().sync_dir().expect("sync dir");

    let store = Arc::new(DirSegmentStore::new(Arc::new(sim.handle())));
    let config = Config { index_interval_bytes: 64, ..Config::default() };
    let analysis = wal::recovery::analyze(store.as_ref(), config.index_interval_bytes, &mut |_| {})
        .expect("analysis only fails on IO errors");
    match Wal::open(store, config) {
        Ok(wal) => {
            assert!(analysis.verdict.is_recoverable(), "opened a log whose verdict refuses");
            if let (Some(first), Some(last)) = (wal.first_lsn(), wal.last_lsn()) {
                let mut expected = first;
                for item in wal.iter_from(first).expect("iter") {
                    let (lsn, bytes) = item.expect("every record of an opened log verifies");
                    assert_eq!(lsn, expected);
                    assert_eq!(wal.read(lsn).expect("read"), bytes);
                    expected = expected.next();
                }
                assert_eq!(expected, last.next());
            }
            // The recovered log takes appends and survives a reopen.
            let lsn = wal.append_blocking(&b"after recovery"[..]).expect("append");
            drop(wal);
            let store = Arc::new(DirSegmentStore::new(Arc::new(sim.handle())));
            let wal = Wal::open(store, config).expect("reopen after recovery");
            assert_eq!(&wal.read(lsn).expect("read")[..], b"after recovery");
        }
        Err(err) => {
            assert!(!analysis.verdict.is_recoverable(), "refused a recoverable log: {err}");
        }
    }
});
