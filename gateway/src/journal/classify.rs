//! Recovery's decision, without IO (issue 26 item 2): what a scan found in one
//! segment ([`SegmentFacts`]) in, what to do with the segment ([`Verdict`]) out.
//! `recovery` reads the files, calls [`scan`] and [`classify`], replays, and only
//! then cuts and removes; `tools::dump` asks the same question and gets the same
//! answer.
//!
//! How a segment ends, and what recovery does (one row per case; "last" is the
//! newest segment, the only one a crash can leave half written: a roll fsyncs the
//! segment it closes, so every earlier segment was whole on disk):
//!
//! | # | the scan ends at                                            | last? | valid record after it? | verdict |
//! |---|-------------------------------------------------------------|-------|------------------------|---------|
//! | 1 | the end of the file, every record whole and in sequence     | any   | –                      | `Replay` |
//! | 2 | a zero tail (preallocated room never written)               | any   | –                      | `CutZeroTail`: replay, truncate quietly |
//! | 3 | a torn last record (truncated, or a checksum that fails: the write past the last fsync that a crash cut) | yes | no | `CutTail`: replay the prefix, truncate, say so |
//! | 4 | garbage after the last record (a torn write's leftovers)     | yes   | no                     | `CutTail` |
//! | 5 | a damaged segment header (torn creation: magic or first seq missing) | yes | no          | `CutTail` at offset 0: the segment is removed |
//! | 6 | a bad checksum mid-segment (a record of this journal follows)| any   | yes                    | `Refuse`, or `CutCorrupt` if allowed |
//! | 7 | a torn record or damaged header in a closed segment          | no    | any                    | `Refuse`, or `CutCorrupt` if allowed |
//! | 8 | a sequence break (a record that passes its checksum but does not follow its predecessor) | any | yes | `Refuse`, or `CutCorrupt` if allowed |
//! | 9 | missing records: a segment (or the first after a snapshot) starts past the next expected seq, e.g. a removed segment | any | yes | `Refuse`, or `CutCorrupt` if allowed |
//! | 10| a header whose first seq differs from the file name's         | any   | –                      | as 5 (last) or 7 (closed) |
//!
//! A misdirected write (a whole record of this journal landing where another
//! belongs) passes its checksum but not the sequence check: row 8. A record of
//! another journal with the right sequence number is not caught here; the
//! checksum does not cover a journal id (the format is unchanged, issue 26).
//!
//! `CutCorrupt` (the operator's `journal.allow_corrupt_truncate`) cuts at the damage
//! and removes every later segment: the records after it are lost, knowingly.
//! Two more refusals are not about one segment and are decided in `recovery`: a
//! record that passes its checksum but does not decode, and a journal whose
//! segments start after seq 1 with no snapshot covering the gap.
//!
//! Why "a valid record after it" separates a torn tail from corruption: a crash
//! can only tear what was written after the last fsync, and nothing is written
//! after a write in flight; a whole record of this journal (checksum good, sequence
//! number where one is due) beyond the damage proves the damage sits in the middle
//! of acknowledged history.

use super::files;
use super::record::{self, RecordFault, RecordRef};

/// What is wrong with a segment's first `files::SEGMENT_HEADER_BYTES` bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderFault {
    /// Fewer bytes than a header.
    #[error("segment header truncated ({have} of {need} bytes)")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// `files::SEGMENT_HEADER_BYTES`.
        need: usize,
    },
    /// The first 8 bytes are not `files::SEGMENT_MAGIC`.
    #[error("not a journal segment (bad magic)")]
    BadMagic,
    /// The header's first sequence number is not the one in the file's name.
    #[error("header says first seq {header}, name says {name}")]
    FirstSeqMismatch {
        /// In the header.
        header: u64,
        /// In the file name.
        name: u64,
    },
}

/// What stopped a scan before the end of a segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The segment's header.
    #[error("{0}")]
    Header(HeaderFault),
    /// A record that does not parse (truncated, length over the limit, checksum).
    #[error("{0}")]
    Record(RecordFault),
    /// A whole record whose sequence number does not follow its predecessor's.
    #[error("sequence break: record {found} follows record {previous}")]
    SequenceBreak {
        /// The record before it.
        previous: u64,
        /// The record found.
        found: u64,
    },
    /// The first record read (after a snapshot, or in the first segment) skips
    /// records nothing else holds.
    #[error("records {from} to {to} are missing (the journal resumes at {resumes})")]
    MissingRecords {
        /// The first missing sequence number.
        from: u64,
        /// The last missing sequence number.
        to: u64,
        /// The record found instead.
        resumes: u64,
    },
}

/// How the scan of one segment ended (the facts [`classify`] decides on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte after the header belongs to a whole record, in sequence (row 1).
    Clean,
    /// Nothing but zeros from `offset` to the end (row 2).
    ZeroTail {
        /// Where the zeros start.
        offset: usize,
    },
    /// The scan stopped at `offset`.
    Damaged {
        /// Where the damage starts, bytes from the start of the segment.
        offset: usize,
        /// What is wrong there.
        damage: Damage,
        /// A valid record of this journal follows the damage (rows 6, 8, 9).
        record_after: bool,
    },
}

/// Facts about one segment, gathered without deciding anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFacts {
    /// The newest segment (the only one a crash can leave half written).
    pub is_last: bool,
    /// How its scan ended.
    pub end: ScanEnd,
}

/// What recovery does with a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Replay it whole; nothing to change on disk.
    Replay,
    /// Replay it; truncate the zeros at `offset` quietly (they are no damage).
    CutZeroTail {
        /// New length of the segment.
        offset: usize,
    },
    /// A torn tail: replay up to `offset`, truncate there (remove the segment when
    /// `offset` is inside the header), and tell the operator.
    CutTail {
        /// New length of the segment.
        offset: usize,
        /// What was found there.
        damage: Damage,
    },
    /// Corruption the operator allowed to cut: as `CutTail`, and every later
    /// segment is removed.
    CutCorrupt {
        /// New length of the segment.
        offset: usize,
        /// What was found there.
        damage: Damage,
    },
    /// Corruption: do not start, change nothing.
    Refuse {
        /// Where the damage starts.
        offset: usize,
        /// What was found there.
        damage: Damage,
    },
}

impl Verdict {
    /// Does recovery stop reading segments after this one?
    pub fn ends_journal(&self) -> bool {
        !matches!(self, Verdict::Replay | Verdict::CutZeroTail { .. })
    }
}

/// The decision table above, as code. Pure: same facts, same verdict.
pub fn classify(facts: &SegmentFacts, allow_corrupt_truncate: bool) -> Verdict {
    let (offset, damage, record_after) = match &facts.end {
        ScanEnd::Clean => return Verdict::Replay,
        ScanEnd::ZeroTail { offset } => return Verdict::CutZeroTail { offset: *offset },
        ScanEnd::Damaged {
            offset,
            damage,
            record_after,
        } => (*offset, damage.clone(), *record_after),
    };
    // A sequence break or a gap is always followed by the record that shows it.
    debug_assert!(
        record_after
            || !matches!(
                damage,
                Damage::SequenceBreak { .. } | Damage::MissingRecords { .. }
            ),
        "a sequence fault is found on a valid record"
    );
    if facts.is_last && !record_after {
        Verdict::CutTail { offset, damage }
    } else if allow_corrupt_truncate {
        Verdict::CutCorrupt { offset, damage }
    } else {
        Verdict::Refuse { offset, damage }
    }
}

/// Checks a segment's header against the sequence number in its name.
pub fn check_header(bytes: &[u8], name_seq: u64) -> Result<(), HeaderFault> {
    let first = files::check_segment_header(bytes)?;
    if first != name_seq {
        return Err(HeaderFault::FirstSeqMismatch {
            header: first,
            name: name_seq,
        });
    }
    Ok(())
}

/// Where the sequence stands when a segment's scan starts and after it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The last record read in earlier segments (None: none yet).
    pub previous_seq: Option<u64>,
    /// The snapshot covers every record up to here (0: no snapshot).
    pub covered: u64,
}

/// Scans one segment named for `name_seq`: checks the header, then every record
/// in turn, handing each whole, in-sequence one to `on_record` (with its offset)
/// before looking at the next. Stops at the first damage or zero tail. Returns how
/// the segment ended; `cursor.previous_seq` follows the records handed out.
/// An error from `on_record` stops the scan and is returned as is.
pub fn scan<E>(
    bytes: &[u8],
    name_seq: u64,
    cursor: &mut Cursor,
    mut on_record: impl FnMut(usize, &RecordRef<'_>) -> Result<(), E>,
) -> Result<ScanEnd, E> {
    if let Err(fault) = check_header(bytes, name_seq) {
        return Ok(ScanEnd::Damaged {
            offset: 0,
            damage: Damage::Header(fault),
            record_after: false,
        });
    }
    let mut offset = files::SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let rec = match record::parse(&bytes[offset..]) {
            Ok(rec) => rec,
            Err(_) if is_zero_tail(&bytes[offset..]) => return Ok(ScanEnd::ZeroTail { offset }),
            Err(fault) => {
                let expected = cursor.previous_seq.map_or(name_seq, |seq| seq + 1);
                return Ok(ScanEnd::Damaged {
                    offset,
                    damage: Damage::Record(fault),
                    record_after: valid_record_after(bytes, offset, expected),
                });
            }
        };
        // Records pass their checksums but do not follow: history is missing,
        // which no torn write explains.
        if let Err(damage) = expected_next(cursor.previous_seq, cursor.covered, rec.seq) {
            return Ok(ScanEnd::Damaged {
                offset,
                damage,
                record_after: true,
            });
        }
        on_record(offset, &rec)?;
        cursor.previous_seq = Some(rec.seq);
        debug_assert!(rec.framed_len >= record::RECORD_HEADER_BYTES);
        offset += rec.framed_len;
        debug_assert!(
            offset <= bytes.len(),
            "a parsed record lies inside its segment"
        );
    }
    Ok(ScanEnd::Clean)
}

/// The first record seen must continue the snapshot (or start at 1); every later one
/// must follow its predecessor.
pub fn expected_next(previous: Option<u64>, covered: u64, seq: u64) -> Result<(), Damage> {
    match previous {
        Some(previous) if seq != previous + 1 => Err(Damage::SequenceBreak {
            previous,
            found: seq,
        }),
        None if seq > covered + 1 => Err(Damage::MissingRecords {
            from: covered + 1,
            to: seq - 1,
            resumes: seq,
        }),
        _ => Ok(()),
    }
}

/// Is there a valid record of this journal anywhere after `offset`, where the record
/// numbered `expected_seq` should have been? Only then is the damage not a torn tail.
/// A zero tail holds none (a record's checksum is never all zeros), so the scan
/// stops at the last non-zero byte: a preallocated tail costs no hashing. A position
/// is hashed only if its header is plausible: a length that fits and a sequence
/// number in `expected_seq ..= expected_seq + (bytes skipped) / header size` (every
/// lost record took at least a header). Without that filter, garbage after the
/// damage cost one checksum of up to 8 MiB per position whose random length fitted:
/// quadratic, 2.8 s for a 6 MiB random tail, hours for a whole segment.
pub fn valid_record_after(bytes: &[u8], offset: usize, expected_seq: u64) -> bool {
    let end = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| last + 1);
    // Positions stop at the last non-zero byte; a record read there keeps the zeros
    // after it (its payload may end in zeros).
    (offset + 1..end.saturating_sub(record::RECORD_HEADER_BYTES - 1)).any(|at| {
        let Some(seq) = record::peek_seq(&bytes[at..]) else {
            return false;
        };
        let lost_max = ((at - offset) / record::RECORD_HEADER_BYTES) as u64;
        (expected_seq..=expected_seq.saturating_add(lost_max)).contains(&seq)
            && record::parse(&bytes[at..]).is_ok()
    })
}

/// The preallocated, never-written rest of a segment: nothing but zeros.
pub fn is_zero_tail(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::encode_into;

    fn segment(first_seq: u64, seqs: impl IntoIterator<Item = u64>) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = files::segment_header(first_seq).to_vec();
        let mut offsets = Vec::new();
        for seq in seqs {
            offsets.push(bytes.len());
            encode_into(&mut bytes, seq, format!("payload {seq}").as_bytes()).unwrap();
        }
        (bytes, offsets)
    }

    fn scan_all(bytes: &[u8], name_seq: u64, cursor: &mut Cursor) -> (ScanEnd, Vec<u64>) {
        let mut seen = Vec::new();
        let end = scan(bytes, name_seq, cursor, |_, rec| {
            seen.push(rec.seq);
            Ok::<(), ()>(())
        })
        .unwrap();
        (end, seen)
    }

    fn damaged(record_after: bool) -> ScanEnd {
        ScanEnd::Damaged {
            offset: 100,
            damage: Damage::Record(RecordFault::ChecksumMismatch { seq: 7 }),
            record_after,
        }
    }

    /// Every combination of the table's inputs, against the table.
    #[test]
    fn classify_follows_the_table_for_every_combination() {
        for is_last in [false, true] {
            for allow in [false, true] {
                let clean = SegmentFacts {
                    is_last,
                    end: ScanEnd::Clean,
                };
                assert_eq!(classify(&clean, allow), Verdict::Replay, "row 1");
                let zeros = SegmentFacts {
                    is_last,
                    end: ScanEnd::ZeroTail { offset: 64 },
                };
                assert_eq!(
                    classify(&zeros, allow),
                    Verdict::CutZeroTail { offset: 64 },
                    "row 2"
                );
                for record_after in [false, true] {
                    let facts = SegmentFacts {
                        is_last,
                        end: damaged(record_after),
                    };
                    let damage = Damage::Record(RecordFault::ChecksumMismatch { seq: 7 });
                    let expected = if is_last && !record_after {
                        Verdict::CutTail {
                            offset: 100,
                            damage,
                        }
                    } else if allow {
                        Verdict::CutCorrupt {
                            offset: 100,
                            damage,
                        }
                    } else {
                        Verdict::Refuse {
                            offset: 100,
                            damage,
                        }
                    };
                    assert_eq!(
                        classify(&facts, allow),
                        expected,
                        "last {is_last} allow {allow} after {record_after}"
                    );
                    assert!(
                        classify(&facts, allow).ends_journal(),
                        "damage always ends the journal"
                    );
                }
            }
        }
    }

    #[test]
    fn row_1_a_whole_segment_replays_every_record() {
        let (bytes, _) = segment(1, 1..=5);
        let (end, seen) = scan_all(&bytes, 1, &mut Cursor::default());
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        // An empty segment (just created) is clean too.
        let (empty, _) = segment(6, []);
        let mut cursor = Cursor {
            previous_seq: Some(5),
            covered: 0,
        };
        assert_eq!(scan_all(&empty, 6, &mut cursor).0, ScanEnd::Clean);
    }

    #[test]
    fn row_2_zeros_after_the_last_record_are_its_end() {
        let (mut bytes, _) = segment(1, 1..=3);
        let end_of_data = bytes.len();
        bytes.resize(end_of_data + 4096, 0);
        let (end, seen) = scan_all(&bytes, 1, &mut Cursor::default());
        assert_eq!(
            end,
            ScanEnd::ZeroTail {
                offset: end_of_data
            }
        );
        assert_eq!(seen, vec![1, 2, 3]);
        let facts = SegmentFacts { is_last: true, end };
        assert_eq!(
            classify(&facts, false),
            Verdict::CutZeroTail {
                offset: end_of_data
            }
        );
    }

    #[test]
    fn rows_3_and_4_a_torn_last_record_or_garbage_is_a_tail_in_the_last_segment_only() {
        let (whole, offsets) = segment(1, 1..=4);
        let last = offsets[3];
        for cut in last + 1..whole.len() {
            let (end, seen) = scan_all(&whole[..cut], 1, &mut Cursor::default());
            assert_eq!(seen, vec![1, 2, 3], "cut {cut}");
            let ScanEnd::Damaged {
                offset,
                record_after,
                ..
            } = end.clone()
            else {
                panic!("cut {cut}: {end:?}")
            };
            assert_eq!((offset, record_after), (last, false));
            let verdict = classify(
                &SegmentFacts {
                    is_last: true,
                    end: end.clone(),
                },
                false,
            );
            assert!(matches!(verdict, Verdict::CutTail { offset, .. } if offset == last));
            // Row 7: the same bytes in a closed segment are corruption.
            let verdict = classify(
                &SegmentFacts {
                    is_last: false,
                    end,
                },
                false,
            );
            assert!(matches!(verdict, Verdict::Refuse { .. }), "cut {cut}");
        }
        let mut garbage = whole.clone();
        garbage.extend_from_slice(b"\x01 leftovers of a torn write");
        let (end, _) = scan_all(&garbage, 1, &mut Cursor::default());
        assert!(matches!(
            end,
            ScanEnd::Damaged {
                record_after: false,
                ..
            }
        ));
    }

    #[test]
    fn rows_5_and_10_a_damaged_header_is_a_torn_creation_when_last() {
        let (whole, _) = segment(9, 9..=10);
        let cases: [(Vec<u8>, HeaderFault); 3] = [
            (
                whole[..10].to_vec(),
                HeaderFault::Truncated { have: 10, need: 16 },
            ),
            (
                [b"XXJRNL01".as_slice(), &whole[8..]].concat(),
                HeaderFault::BadMagic,
            ),
            (
                whole.clone(),
                HeaderFault::FirstSeqMismatch { header: 9, name: 8 },
            ),
        ];
        for (bytes, fault) in cases {
            let name_seq = if matches!(fault, HeaderFault::FirstSeqMismatch { .. }) {
                8
            } else {
                9
            };
            let (end, seen) = scan_all(&bytes, name_seq, &mut Cursor::default());
            assert!(seen.is_empty());
            assert_eq!(
                end,
                ScanEnd::Damaged {
                    offset: 0,
                    damage: Damage::Header(fault.clone()),
                    record_after: false
                }
            );
            let last = classify(
                &SegmentFacts {
                    is_last: true,
                    end: end.clone(),
                },
                false,
            );
            assert!(
                matches!(last, Verdict::CutTail { offset: 0, .. }),
                "{fault}"
            );
            let closed = classify(
                &SegmentFacts {
                    is_last: false,
                    end,
                },
                false,
            );
            assert!(
                matches!(closed, Verdict::Refuse { offset: 0, .. }),
                "{fault}"
            );
        }
    }

    #[test]
    fn row_6_a_bad_checksum_with_records_after_it_is_corruption() {
        let (mut bytes, offsets) = segment(1, 1..=6);
        bytes[offsets[2] + record::RECORD_HEADER_BYTES] ^= 0x40;
        let (end, seen) = scan_all(&bytes, 1, &mut Cursor::default());
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(
            end,
            ScanEnd::Damaged {
                offset: offsets[2],
                damage: Damage::Record(RecordFault::ChecksumMismatch { seq: 3 }),
                record_after: true
            }
        );
        let facts = SegmentFacts { is_last: true, end };
        assert!(
            matches!(classify(&facts, false), Verdict::Refuse { offset, .. } if offset == offsets[2])
        );
        assert!(
            matches!(classify(&facts, true), Verdict::CutCorrupt { offset, .. } if offset == offsets[2])
        );
    }

    #[test]
    fn row_8_a_sequence_break_is_corruption() {
        let (bytes, offsets) = segment(1, [1, 2, 4, 5]);
        let (end, seen) = scan_all(&bytes, 1, &mut Cursor::default());
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(
            end,
            ScanEnd::Damaged {
                offset: offsets[2],
                damage: Damage::SequenceBreak {
                    previous: 2,
                    found: 4
                },
                record_after: true
            }
        );
        let facts = SegmentFacts { is_last: true, end };
        assert!(matches!(classify(&facts, false), Verdict::Refuse { .. }));
    }

    #[test]
    fn row_9_a_missing_segment_is_corruption() {
        // Records 1..=3, then a segment starting at 7: segment 4..=6 is gone.
        let (first, _) = segment(1, 1..=3);
        let (second, _) = segment(7, 7..=8);
        let mut cursor = Cursor::default();
        assert_eq!(scan_all(&first, 1, &mut cursor).0, ScanEnd::Clean);
        let (end, seen) = scan_all(&second, 7, &mut cursor);
        assert!(seen.is_empty());
        assert_eq!(
            end,
            ScanEnd::Damaged {
                offset: files::SEGMENT_HEADER_BYTES,
                damage: Damage::SequenceBreak {
                    previous: 3,
                    found: 7
                },
                record_after: true
            }
        );
        // After a snapshot at 10, a journal resuming at 12 misses record 11.
        let (late, _) = segment(12, 12..=13);
        let mut cursor = Cursor {
            previous_seq: None,
            covered: 10,
        };
        let (end, _) = scan_all(&late, 12, &mut cursor);
        assert_eq!(
            end,
            ScanEnd::Damaged {
                offset: files::SEGMENT_HEADER_BYTES,
                damage: Damage::MissingRecords {
                    from: 11,
                    to: 11,
                    resumes: 12
                },
                record_after: true
            }
        );
        let facts = SegmentFacts { is_last: true, end };
        assert!(matches!(classify(&facts, false), Verdict::Refuse { .. }));
        // Records the snapshot already covers are read, not a gap.
        let (covered, _) = segment(5, 5..=12);
        let mut cursor = Cursor {
            previous_seq: None,
            covered: 10,
        };
        assert_eq!(scan_all(&covered, 5, &mut cursor).1.len(), 8);
    }

    #[test]
    fn a_scan_stops_when_the_visitor_fails_and_hands_out_nothing_after() {
        let (bytes, _) = segment(1, 1..=5);
        let mut seen = Vec::new();
        let result = scan(&bytes, 1, &mut Cursor::default(), |_, rec| {
            if rec.seq == 3 {
                return Err("undecodable");
            }
            seen.push(rec.seq);
            Ok(())
        });
        assert_eq!(result, Err("undecodable"));
        assert_eq!(seen, vec![1, 2]);
    }
}
