//! The on-disk spool: an append-only FIFO of records, in segment files of JSON lines.
//!
//! Why this shape: appends are one `write` per chunk (a crash of the process loses only what
//! was not yet handed to the OS), a torn last line is recognised and skipped, and a segment is
//! deleted only after all its rows are committed, so a crash mid-replay repeats work (rows are
//! deduplicated by `message_id`) instead of losing it.
//!
//! Segment names are sequence numbers: appends go after the newest, and [`Spool::prepend`]
//! (rows older than everything spooled) goes before the oldest.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::Record;

/// Start of the sequence space: leaves room to prepend below it.
const FIRST_SEQ: u64 = 1 << 40;
/// A new segment is started past this size, so a replay repeats little after a crash.
const SEGMENT_BYTES: u64 = 4 << 20;

/// The spool directory and what is in it.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// seq → (bytes, rows)
    segments: BTreeMap<u64, (u64, u64)>,
    /// Open segment for appends.
    tail: Option<(u64, File)>,
    max_bytes: u64,
    bytes: u64,
    rows: u64,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.jsonl"))
}

impl Spool {
    /// Opens (creating) `dir` and finds segments a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")).and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = entry.metadata()?.len();
            let rows = count_lines(&entry.path())?;
            segments.insert(seq, (bytes, rows));
        }
        let bytes = segments.values().map(|(b, _)| b).sum();
        let rows = segments.values().map(|(_, r)| r).sum();
        Ok(Spool { dir: dir.to_path_buf(), segments, tail: None, max_bytes, bytes, rows })
    }

    /// Nothing spooled.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rows on disk (including a segment being replayed).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Changes the size limit.
    pub fn set_max_bytes(&mut self, max: u64) {
        self.max_bytes = max;
    }

    /// Appends after everything spooled. Returns how many rows did not fit under the size
    /// limit (those are not written: the caller counts them as dropped).
    pub fn append(&mut self, records: &[Record]) -> io::Result<usize> {
        let (buf, n, dropped) = self.encode(records);
        if n == 0 {
            return Ok(dropped);
        }
        let rotate = match &self.tail {
            Some((seq, _)) => self.segments.get(seq).is_none_or(|(b, _)| *b >= SEGMENT_BYTES),
            None => true,
        };
        if rotate {
            let seq = self.segments.keys().next_back().map_or(FIRST_SEQ, |s| s + 1);
            let file = OpenOptions::new().create(true).append(true).open(seg_path(&self.dir, seq))?;
            self.segments.insert(seq, (0, 0));
            self.tail = Some((seq, file));
        }
        let (seq, file) = self.tail.as_mut().expect("tail segment");
        file.write_all(&buf)?;
        let meta = self.segments.get_mut(seq).expect("tail is listed");
        meta.0 += buf.len() as u64;
        meta.1 += n as u64;
        self.bytes += buf.len() as u64;
        self.rows += n as u64;
        Ok(dropped)
    }

    /// Writes rows older than everything spooled, before the oldest segment, and syncs them.
    pub fn prepend(&mut self, records: &[Record]) -> io::Result<usize> {
        let (buf, n, dropped) = self.encode(records);
        if n == 0 {
            return Ok(dropped);
        }
        let seq = self.segments.keys().next().map_or(FIRST_SEQ, |s| s - 1);
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        fs::rename(&tmp, seg_path(&self.dir, seq))?;
        self.segments.insert(seq, (buf.len() as u64, n as u64));
        self.bytes += buf.len() as u64;
        self.rows += n as u64;
        Ok(dropped)
    }

    fn encode(&self, records: &[Record]) -> (Vec<u8>, usize, usize) {
        let mut buf = Vec::with_capacity(records.len() * 400);
        let mut n = 0;
        for r in records {
            let before = buf.len();
            serde_json::to_writer(&mut buf, r).expect("records serialise");
            buf.push(b'\n');
            if self.bytes + buf.len() as u64 > self.max_bytes {
                buf.truncate(before);
                break;
            }
            n += 1;
        }
        (buf, n, records.len() - n)
    }

    /// Reads the oldest segment whole. It stays on disk until [`Spool::remove`].
    pub fn read_head(&mut self) -> io::Result<Option<(u64, Vec<Record>)>> {
        let Some(&seq) = self.segments.keys().next() else { return Ok(None) };
        if self.tail.as_ref().is_some_and(|(t, _)| *t == seq) {
            // Appends must not land in a segment being replayed (it is deleted afterwards).
            self.tail = None;
        }
        let path = seg_path(&self.dir, seq);
        let mut records = Vec::new();
        let text = fs::read(&path)?;
        let complete = text.last().is_none_or(|b| *b == b'\n');
        let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
        for (i, line) in lines.iter().enumerate() {
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => records.push(r),
                Err(e) if i + 1 == lines.len() && !complete => {
                    tracing::warn!(segment = %path.display(), "skipping a torn last line (the process stopped mid-write): {e}");
                }
                Err(e) => {
                    tracing::error!(segment = %path.display(), line = i + 1, "skipping an unreadable spool line: {e}")
                }
            }
        }
        Ok(Some((seq, records)))
    }

    /// Deletes a segment whose rows are all committed.
    pub fn remove(&mut self, seq: u64) -> io::Result<()> {
        if let Some((bytes, rows)) = self.segments.remove(&seq) {
            self.bytes -= bytes;
            self.rows -= rows;
        }
        if self.tail.as_ref().is_some_and(|(t, _)| *t == seq) {
            self.tail = None;
        }
        match fs::remove_file(seg_path(&self.dir, seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn count_lines(path: &Path) -> io::Result<u64> {
    Ok(BufReader::new(File::open(path)?).split(b'\n').count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChannelNotice;
    use chrono::Utc;

    fn rec(i: usize) -> Record {
        Record::Notice(ChannelNotice {
            channel: "c".into(),
            msg_id: Some(i.to_string()),
            message: format!("n{i}"),
            received_at: Utc::now(),
            tags: "{}".into(),
            notice_at: None,
            key: String::new(),
        })
    }

    fn ids(rs: &[Record]) -> Vec<String> {
        rs.iter()
            .map(|r| match r {
                Record::Notice(n) => n.msg_id.clone().unwrap(),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn records_come_back_in_order_with_prepends_first_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.append(&[rec(3), rec(4)]).unwrap();
        s.prepend(&[rec(1), rec(2)]).unwrap();
        s.append(&[rec(5)]).unwrap();
        drop(s);
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.rows(), 5);
        let mut got = vec![];
        while let Some((seq, rs)) = s.read_head().unwrap() {
            got.extend(ids(&rs));
            s.remove(seq).unwrap();
        }
        assert_eq!(got, ["1", "2", "3", "4", "5"]);
        assert!(s.is_empty() && s.bytes() == 0);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.append(&[rec(1), rec(2)]).unwrap();
        let (seq, _) = s.tail.as_ref().map(|(q, _)| (*q, ())).unwrap();
        drop(s);
        let mut f = OpenOptions::new().append(true).open(seg_path(dir.path(), seq)).unwrap();
        f.write_all(b"{\"kind\":\"notice\",\"chan").unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        let (_, rs) = s.read_head().unwrap().unwrap();
        assert_eq!(ids(&rs), ["1", "2"]);
    }

    #[test]
    fn the_size_limit_drops_and_reports_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 300).unwrap();
        let dropped = s.append(&(0..10).map(rec).collect::<Vec<_>>()).unwrap();
        assert!(dropped > 0 && dropped < 10, "dropped {dropped}");
        assert!(s.bytes() <= 300);
        assert_eq!(s.rows() as usize, 10 - dropped);
    }

    #[test]
    fn appends_after_reading_the_head_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.append(&[rec(1)]).unwrap();
        let (seq, rs) = s.read_head().unwrap().unwrap();
        s.append(&[rec(2)]).unwrap();
        s.remove(seq).unwrap();
        assert_eq!(ids(&rs), ["1"]);
        let (_, rs) = s.read_head().unwrap().unwrap();
        assert_eq!(ids(&rs), ["2"], "the later append was not deleted with the replayed segment");
    }
}
