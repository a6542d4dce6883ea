//! Summaries of repeated accesses. The kernel reports the first of identical credential
//! accesses in a window and only counts the rest (see `probes::repeats`); once the window is
//! over, the agent writes one record standing for all of them: the first access's record with
//! `count`, `first_ts`, `last_ts` and `repeat_of`, judged and counted like the first.

use std::collections::HashMap;

use credwatch_common::{REPEAT_ENTRIES, RepeatKey};

use crate::{probes::repeats::Repeats, sinks::forensic};

/// How a written record counts: its metric labels and whether it is an alerting deviation.
#[derive(Debug, Clone)]
pub struct Tally {
    /// namespace, workload, container, secret, kind.
    pub labels: [String; 5],
    pub verdict: &'static str,
    pub reason: &'static str,
    pub alert: bool,
    /// The allowed-access deduplication key (allowed accesses only).
    pub allowed_key: Option<AllowedKey>,
}

/// (container, binary, secret, path or endpoint).
pub type AllowedKey = (String, Vec<u8>, String, String);

/// What a repeat stands for: the first access's record and tally, or None when the first
/// access was not a credential or was ignored (its repeats are too).
type Origin = Option<Box<(forensic::Record, Tally)>>;

/// Windows a finished entry may wait for its first record (still in the ring buffer, or held
/// for its container's metadata) before its repeats are counted as unattributable.
const ORIGIN_WAIT_WINDOWS: u32 = 10;

#[derive(Default)]
pub struct RepeatOrigins {
    origins: HashMap<RepeatKey, Origin>,
}

/// What to do with one finished kernel entry.
pub enum Finished {
    /// Write this summary (and delete the entry).
    Summary(Box<(forensic::Record, Tally)>),
    /// Nothing to report (no repeats, or the first access was not reported); delete the entry.
    Done,
    /// The first record has not been handled yet: keep the entry.
    Wait,
    /// The first record never came (lost or undecodable): these repeats cannot be described;
    /// delete the entry and count them.
    Unattributed(u64),
}

impl RepeatOrigins {
    /// Remembers what the first access of `key` was reported as (None: not reported).
    pub fn remember(&mut self, key: RepeatKey, origin: Option<(forensic::Record, Tally)>) {
        // Bounded by the kernel map: an entry per key the kernel holds, plus some slack.
        if self.origins.len() >= 2 * REPEAT_ENTRIES as usize {
            return;
        }
        self.origins.insert(key, origin.map(Box::new));
    }

    pub fn finish(
        &mut self,
        key: &RepeatKey,
        repeats: Repeats,
        now_epoch: u32,
        all: bool,
    ) -> Finished {
        match self.origins.remove(key) {
            Some(Some(origin)) if repeats.count > 0 => {
                let (first, tally) = *origin;
                Finished::Summary(Box::new((summary(first, repeats), tally)))
            }
            Some(_) => Finished::Done,
            None if repeats.count == 0 => Finished::Done,
            None if !all && key.epoch + ORIGIN_WAIT_WINDOWS > now_epoch => Finished::Wait,
            None => Finished::Unattributed(repeats.count),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.origins.len()
    }
}

fn summary(mut record: forensic::Record, repeats: Repeats) -> forensic::Record {
    // Timestamps are filled by the caller, which knows the boot-to-wall-clock offset.
    record.repeat_of = Some(std::mem::take(&mut record.event_id));
    record.event_id = format!(
        "{}-repeats",
        record.repeat_of.as_deref().unwrap_or_default()
    );
    record.count = Some(repeats.count);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(epoch: u32) -> RepeatKey {
        RepeatKey {
            epoch,
            ..Default::default()
        }
    }

    fn repeats(count: u64) -> Repeats {
        Repeats {
            count,
            first_ns: 10,
            last_ns: 20,
        }
    }

    #[test]
    fn an_unknown_first_record_is_waited_for_then_counted() {
        let mut origins = RepeatOrigins::default();
        assert!(matches!(
            origins.finish(&key(5), repeats(3), 6, false),
            Finished::Wait
        ));
        assert!(matches!(
            origins.finish(&key(5), repeats(3), 5 + ORIGIN_WAIT_WINDOWS, false),
            Finished::Unattributed(3)
        ));
        assert!(matches!(
            origins.finish(&key(5), repeats(3), 6, true),
            Finished::Unattributed(3)
        ));
        assert!(matches!(
            origins.finish(&key(5), repeats(0), 6, false),
            Finished::Done
        ));
    }

    #[test]
    fn ignored_first_accesses_have_ignored_repeats() {
        let mut origins = RepeatOrigins::default();
        origins.remember(key(5), None);
        assert!(matches!(
            origins.finish(&key(5), repeats(3), 7, false),
            Finished::Done
        ));
        assert_eq!(origins.len(), 0);
    }
}
