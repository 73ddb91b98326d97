//! The on-disk spool: an append-only FIFO of records, in segment files of JSON lines.
//!
//! Why this shape: appends are one `write` per chunk (a crash of the process loses only what
//! was not yet handed to the OS), a torn last line is recognised and skipped, and a segment is
//! deleted only after all its rows are committed, so a crash mid-replay repeats work (rows are
//! deduplicated by `message_id`) instead of losing it.
//!
//! Segment names are sequence numbers: appends go after the newest, and [`Spool::prepend`]
//! (rows older than everything spooled) goes before the oldest.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::Record;

/// Start of the sequence space: leaves room to prepend below it.
const FIRST_SEQ: u64 = 1 << 40;
/// A new segment is started past this size, so a replay repeats little after a crash.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Where segments that cannot be replayed are moved, inside the spool directory.
pub const CORRUPT_DIR: &str = "corrupt";

/// Where dead letters go that the database would not take either (not a segment: never replayed).
pub const DEAD_LETTERS_FILE: &str = "dead_letters.jsonl";

/// The spool directory and what is in it.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Sequence number → (bytes, rows); the number is the file name, and the order of replay.
    segments: BTreeMap<u64, (u64, u64)>,
    /// Segments read with some unreadable lines: moved aside, not deleted, once replayed.
    damaged: BTreeSet<u64>,
    /// The segment appends go to, open; a new one starts past [`SEGMENT_BYTES`].
    tail: Option<(u64, File)>,
    max_bytes: u64,
    bytes: u64,
    rows: u64,
    set_aside: u64,
    /// Held locked while open: a second logger on the same directory would append to and
    /// delete this one's segments.
    _lock: Option<File>,
}

/// What [`Spool::append`] did with `records`: the first `written` are on disk, the last
/// `over_limit` did not fit under the size limit, and those in between were not written
/// because of `error` (e.g. the disk is full): they are the caller's to keep.
#[derive(Debug, Default)]
pub struct Appended {
    /// Rows handed to the OS, from the front.
    pub written: usize,
    /// Rows past `spool_max_bytes`, from the back.
    pub over_limit: usize,
    /// Why the rest was not written.
    pub error: Option<io::Error>,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.jsonl"))
}

/// The sequence number of one of our segment names (exactly 20 digits, `.jsonl`); anything
/// else in the directory (`1.jsonl`, an editor's backup) is not ours and is left alone.
fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Is this error "no space left" (or a quota), rather than a broken or read-only disk?
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

impl Spool {
    /// Opens (creating) `dir` and finds segments a previous run left. A segment that cannot be
    /// read is listed anyway; [`Spool::read_head`] sets it aside when its turn comes.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        // No lock file on a read-only directory: nothing can be spooled there anyway.
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".lock")).ok();
        if let Some(Err(fs::TryLockError::WouldBlock)) = lock.as_ref().map(File::try_lock) {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "another running logger uses it; give each logger its own batch.spool_dir",
            ));
        }
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Some(seq) = entry.file_name().to_str().and_then(parse_seg_name) else { continue };
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let rows = fs::read(entry.path()).map(|t| count_lines(&t)).unwrap_or(0);
            segments.insert(seq, (bytes, rows));
        }
        let bytes = segments.values().map(|(b, _)| b).sum();
        let rows = segments.values().map(|(_, r)| r).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            segments,
            damaged: BTreeSet::new(),
            tail: None,
            max_bytes,
            bytes,
            rows,
            set_aside: 0,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a row that neither its table nor `dead_letters` would take, with both reasons, as
    /// one JSON line in `DEAD_LETTERS_FILE` (synced). Replay never reads it: a person does.
    pub fn keep_dead_letter(&self, record: &Record, reason: &str, why_not_stored: &str) -> io::Result<()> {
        let line = serde_json::json!({
            "record": record,
            "error": reason,
            "dead_letters_error": why_not_stored,
            "kept_at": chrono::Utc::now(),
        });
        let mut text = serde_json::to_vec(&line).map_err(io::Error::other)?;
        text.push(b'\n');
        let mut f = OpenOptions::new().create(true).append(true).open(self.dir.join(DEAD_LETTERS_FILE))?;
        f.write_all(&text)?;
        f.sync_data()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes of the segments on disk (what `spool_max_bytes` limits).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Rows on disk (including a segment being replayed).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Segments moved to `corrupt/` (or found missing) since the spool was opened.
    pub fn set_aside(&self) -> u64 {
        self.set_aside
    }

    /// Applies a reload's `spool_max_bytes`: what is on disk stays; later appends past it come
    /// back as [`Appended::over_limit`].
    pub fn set_max_bytes(&mut self, max: u64) {
        self.max_bytes = max;
    }

    /// Appends after everything spooled, without waiting for the disk (a crash of the process
    /// loses nothing handed to the OS). On an error, a torn line is cut off and the next
    /// append starts a new segment, so no segment is left with garbage in its middle.
    pub fn append<R: Borrow<Record>>(&mut self, records: &[R]) -> Appended {
        let (buf, ends, over_limit) = self.encode(records, true);
        let mut out = Appended { written: 0, over_limit, error: None };
        if ends.is_empty() {
            return out;
        }
        let rotate = match &self.tail {
            Some((seq, _)) => self.segments.get(seq).is_none_or(|(b, _)| *b >= SEGMENT_BYTES),
            None => true,
        };
        if rotate {
            let seq = self.segments.keys().next_back().map_or(FIRST_SEQ, |s| s + 1);
            match OpenOptions::new().create(true).append(true).open(seg_path(&self.dir, seq)) {
                Ok(file) => {
                    self.segments.insert(seq, (0, 0));
                    self.tail = Some((seq, file));
                }
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
        let (seq, file) = self.tail.as_mut().expect("tail segment");
        let seq = *seq;
        let start = self.segments[&seq].0;
        let (kept_rows, kept_bytes) = match file.write_all(&buf) {
            Ok(()) => (ends.len(), buf.len() as u64),
            Err(e) => {
                // What reached the file: whole lines count as written, a torn one is cut off.
                let on_disk = file.metadata().map(|m| m.len().saturating_sub(start)).unwrap_or(0);
                let rows = ends.iter().take_while(|end| **end <= on_disk).count();
                let bytes = if rows == 0 { 0 } else { ends[rows - 1] };
                let _ = file.set_len(start + bytes);
                self.tail = None;
                out.error = Some(e);
                (rows, bytes)
            }
        };
        let meta = self.segments.get_mut(&seq).expect("tail is listed");
        meta.0 += kept_bytes;
        meta.1 += kept_rows as u64;
        if *meta == (0, 0) {
            // Never leave an empty segment behind (it would only be set aside later).
            self.segments.remove(&seq);
            self.tail = None;
            let _ = fs::remove_file(seg_path(&self.dir, seq));
        }
        self.bytes += kept_bytes;
        self.rows += kept_rows as u64;
        out.written = kept_rows;
        out
    }

    /// Writes rows older than everything spooled, before the oldest segment, and syncs them:
    /// all of them or (on an error) none. These rows were already accepted into memory, so
    /// `spool_max_bytes` does not apply: it may be exceeded by at most the memory queue.
    pub fn prepend(&mut self, records: &[Record]) -> io::Result<()> {
        let (buf, ends, _) = self.encode(records, false);
        if ends.is_empty() {
            return Ok(());
        }
        let seq = self.segments.keys().next().map_or(FIRST_SEQ, |s| s - 1);
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            fs::rename(&tmp, seg_path(&self.dir, seq))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.segments.insert(seq, (buf.len() as u64, ends.len() as u64));
        self.bytes += buf.len() as u64;
        self.rows += ends.len() as u64;
        Ok(())
    }

    /// The encoded lines that fit under the limit, their end offsets, and how many did not fit.
    fn encode<R: Borrow<Record>>(&self, records: &[R], limit: bool) -> (Vec<u8>, Vec<u64>, usize) {
        let mut buf = Vec::with_capacity(records.len() * 400);
        let mut ends = Vec::with_capacity(records.len());
        for r in records {
            let before = buf.len();
            serde_json::to_writer(&mut buf, r.borrow()).expect("records serialise");
            buf.push(b'\n');
            if limit && self.bytes + buf.len() as u64 > self.max_bytes {
                buf.truncate(before);
                break;
            }
            ends.push(buf.len() as u64);
        }
        let over = records.len() - ends.len();
        (buf, ends, over)
    }

    /// Reads the oldest segment that holds any readable row. It stays on disk until
    /// [`Spool::remove`]. Segments that are missing, unreadable or hold no readable row are
    /// moved to `corrupt/` (or forgotten), each logged once with its row count; a segment
    /// with some unreadable lines gives its good rows and is moved aside after its replay.
    /// Never fails and never returns an empty segment, so a caller loop always progresses.
    pub fn read_head(&mut self) -> Option<(u64, Vec<Record>)> {
        loop {
            let (&seq, &(_, listed_rows)) = self.segments.iter().next()?;
            if self.tail.as_ref().is_some_and(|(t, _)| *t == seq) {
                // Appends must not land in a segment being replayed (it is deleted afterwards).
                self.tail = None;
            }
            let path = seg_path(&self.dir, seq);
            let text = match fs::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(segment = %path.display(), rows = listed_rows, "a spool segment is missing (deleted while the logger ran?); its rows are lost, going on");
                    self.forget(seq);
                    self.set_aside += 1;
                    continue;
                }
                Err(e) => {
                    self.move_aside(seq, listed_rows, &format!("cannot read it: {e}"));
                    continue;
                }
            };
            let complete = text.last().is_none_or(|b| *b == b'\n');
            let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
            let (mut records, mut bad, mut torn) = (Vec::with_capacity(lines.len()), 0u64, false);
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_slice::<Record>(line) {
                    Ok(r) => records.push(r),
                    Err(_) if i + 1 == lines.len() && !complete => torn = true,
                    Err(_) => bad += 1,
                }
            }
            if records.is_empty() {
                let why =
                    if text.is_empty() { "it is empty".to_string() } else { "no line in it is a row".to_string() };
                self.move_aside(seq, lines.len() as u64, &why);
                continue;
            }
            if torn {
                tracing::warn!(segment = %path.display(), rows = records.len(), "skipping a torn last line (the process stopped mid-write)");
            }
            if bad > 0 {
                tracing::warn!(segment = %path.display(), rows = records.len(), unreadable_lines = bad, "a spool segment has unreadable lines; replaying its good rows, then moving it to {CORRUPT_DIR}/");
                self.damaged.insert(seq);
            }
            return Some((seq, records));
        }
    }

    /// Drops a segment from the index (its file is gone or was moved).
    fn forget(&mut self, seq: u64) {
        if let Some((bytes, rows)) = self.segments.remove(&seq) {
            self.bytes -= bytes;
            self.rows -= rows;
        }
        self.damaged.remove(&seq);
        if self.tail.as_ref().is_some_and(|(t, _)| *t == seq) {
            self.tail = None;
        }
    }

    /// Moves a segment to `corrupt/` for a person to look at; logs once.
    fn move_aside(&mut self, seq: u64, rows: u64, why: &str) {
        let from = seg_path(&self.dir, seq);
        let corrupt = self.dir.join(CORRUPT_DIR);
        let moved = fs::create_dir_all(&corrupt).and_then(|()| {
            let mut to = corrupt.join(format!("{seq:020}.jsonl"));
            let mut n = 1;
            while to.exists() {
                to = corrupt.join(format!("{seq:020}.{n}.jsonl"));
                n += 1;
            }
            fs::rename(&from, &to).map(|()| to)
        });
        match moved {
            Ok(to) => {
                tracing::warn!(segment = %from.display(), rows, moved_to = %to.display(), "a spool segment cannot be replayed ({why}); moved aside, going on")
            }
            Err(e) => {
                tracing::error!(segment = %from.display(), rows, "a spool segment cannot be replayed ({why}) nor moved aside ({e}); skipping it until the next start")
            }
        }
        self.forget(seq);
        self.set_aside += 1;
    }

    /// Deletes a segment whose rows are all committed (a damaged one is moved aside instead).
    pub fn remove(&mut self, seq: u64) -> io::Result<()> {
        if self.damaged.contains(&seq) {
            let rows = self.segments.get(&seq).map_or(0, |m| m.1);
            self.move_aside(seq, rows, "it has unreadable lines; its good rows are written");
            return Ok(());
        }
        self.forget(seq);
        match fs::remove_file(seg_path(&self.dir, seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn count_lines(text: &[u8]) -> u64 {
    text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64
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
            raw: None,
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
        s.append(&[rec(3), rec(4)]);
        s.prepend(&[rec(1), rec(2)]).unwrap();
        s.append(&[rec(5)]);
        drop(s);
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert_eq!(s.rows(), 5);
        let mut got = vec![];
        while let Some((seq, rs)) = s.read_head() {
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
        s.append(&[rec(1), rec(2)]);
        let (seq, _) = s.tail.as_ref().map(|(q, _)| (*q, ())).unwrap();
        drop(s);
        let mut f = OpenOptions::new().append(true).open(seg_path(dir.path(), seq)).unwrap();
        f.write_all(b"{\"kind\":\"notice\",\"chan").unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        let (_, rs) = s.read_head().unwrap();
        assert_eq!(ids(&rs), ["1", "2"]);
    }

    #[test]
    fn the_size_limit_drops_and_reports_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 300).unwrap();
        let a = s.append(&(0..10).map(rec).collect::<Vec<_>>());
        let dropped = a.over_limit;
        assert!(a.error.is_none() && a.written == 10 - dropped);
        assert!(dropped > 0 && dropped < 10, "dropped {dropped}");
        assert!(s.bytes() <= 300);
        assert_eq!(s.rows() as usize, 10 - dropped);
    }

    #[test]
    fn appends_after_reading_the_head_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.append(&[rec(1)]);
        let (seq, rs) = s.read_head().unwrap();
        s.append(&[rec(2)]);
        s.remove(seq).unwrap();
        assert_eq!(ids(&rs), ["1"]);
        let (_, rs) = s.read_head().unwrap();
        assert_eq!(ids(&rs), ["2"], "the later append was not deleted with the replayed segment");
    }

    fn corrupt_files(dir: &Path) -> Vec<String> {
        fs::read_dir(dir.join(CORRUPT_DIR))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn zero_byte_garbage_and_torn_only_segments_are_moved_aside_and_the_next_segment_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let seg = |seq: u64| seg_path(dir.path(), seq);
        fs::write(seg(FIRST_SEQ), b"").unwrap();
        fs::write(seg(FIRST_SEQ + 1), b"\x00\xffgarbage\nnot json either\n").unwrap();
        fs::write(seg(FIRST_SEQ + 2), b"{\"kind\":\"notice\",\"chan").unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.append(&[rec(7)]);
        let (seq, rs) = s.read_head().expect("the good segment");
        assert_eq!(ids(&rs), ["7"]);
        assert_eq!(s.set_aside(), 3);
        let mut moved = corrupt_files(dir.path());
        moved.sort();
        assert_eq!(moved.len(), 3, "{moved:?}");
        s.remove(seq).unwrap();
        assert!(s.read_head().is_none() && s.is_empty() && s.rows() == 0 && s.bytes() == 0);
    }

    #[test]
    fn a_missing_head_segment_is_skipped_and_files_not_ours_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("1.jsonl"), b"{}\n").unwrap();
        fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        fs::write(dir.path().join(format!("{:021}.jsonl", 5)), b"x\n").unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        assert!(s.is_empty(), "only 20-digit names are segments");
        s.append(&[rec(1)]);
        s.tail = None;
        s.append(&[rec(2)]);
        fs::remove_file(seg_path(dir.path(), FIRST_SEQ)).unwrap();
        let (_, rs) = s.read_head().expect("the second segment");
        assert_eq!(ids(&rs), ["2"]);
        assert_eq!(s.set_aside(), 1);
        assert_eq!(s.rows(), 1);
        assert!(dir.path().join("1.jsonl").exists() && dir.path().join("notes.txt").exists());
    }

    #[test]
    fn a_segment_with_one_bad_line_gives_its_good_rows_then_is_kept_in_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.append(&[rec(1)]);
        let (seq, _) = s.tail.as_ref().map(|(q, _)| (*q, ())).unwrap();
        drop(s);
        let mut f = OpenOptions::new().append(true).open(seg_path(dir.path(), seq)).unwrap();
        f.write_all(b"garbage\n").unwrap();
        serde_json::to_writer(&mut f, &rec(2)).unwrap();
        f.write_all(b"\n").unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        let (seq, rs) = s.read_head().unwrap();
        assert_eq!(ids(&rs), ["1", "2"]);
        s.remove(seq).unwrap();
        assert_eq!(corrupt_files(dir.path()).len(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_disk_mid_append_keeps_whole_lines_cuts_the_torn_one_and_says_which_rows_were_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        // /dev/full answers every write with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", seg_path(dir.path(), FIRST_SEQ)).unwrap();
        let a = s.append(&[rec(1), rec(2)]);
        assert_eq!(a.written, 0);
        assert!(is_disk_full(a.error.as_ref().unwrap()), "{:?}", a.error);
        assert!(s.is_empty() && s.rows() == 0, "nothing counted as spooled");
        assert!(fs::symlink_metadata(seg_path(dir.path(), FIRST_SEQ)).is_err(), "no empty segment left behind");
        let a = s.append(&[rec(3)]);
        assert!(a.error.is_none() && a.written == 1);
        assert_eq!(ids(&s.read_head().unwrap().1), ["3"]);
    }
}
