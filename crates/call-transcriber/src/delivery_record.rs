//! [`DeliveryRecord`]: what Kinesis acknowledged of a call during a run ([`Delivered`]) and
//! how much of it the call's lease has recorded. The publisher sends a record that could
//! change `Delivered` (START, a final segment, a category, END) only once the lease has
//! recorded every change before it, so an attempt that stops (a crash, a timeout, DynamoDB
//! unreachable) leaves at most one acknowledged record unrecorded, which the attempt that
//! takes the call over publishes again. Partial segments are not held back: `Delivered`
//! does not count them.

use call_lifecycle::Delivered;
use lca_events::LcaMessage;
use tokio::sync::watch;

/// `Delivered` with the number of changes made to it in this run.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    /// Changes made to `delivered` in this run.
    pub version: u64,
    /// What Kinesis acknowledged, the run's start included.
    pub delivered: Delivered,
}

/// The publisher's side: takes acknowledgements, waits for the lease to record them.
#[derive(Debug)]
pub struct DeliveryRecord {
    delivered: watch::Sender<Versioned>,
    /// `None` for a run without a lease: nothing to wait for.
    recorded: Option<watch::Receiver<u64>>,
}

/// The lease writer's side: what to record, and where to say what it recorded.
#[derive(Debug)]
pub struct LeaseSide {
    /// Changes to record; wakes on each.
    pub delivered: watch::Receiver<Versioned>,
    /// The `version` of the last `Delivered` the lease recorded.
    pub recorded: watch::Sender<u64>,
}

/// A record for a run that starts from `start` (what the lease says was delivered), and the
/// lease writer's side of it.
pub fn delivery_record(start: Delivered) -> (DeliveryRecord, LeaseSide) {
    let (delivered_tx, delivered_rx) = watch::channel(Versioned {
        version: 0,
        delivered: start,
    });
    let (recorded_tx, recorded_rx) = watch::channel(0);
    (
        DeliveryRecord {
            delivered: delivered_tx,
            recorded: Some(recorded_rx),
        },
        LeaseSide {
            delivered: delivered_rx,
            recorded: recorded_tx,
        },
    )
}

impl DeliveryRecord {
    /// A record for a run without a lease: it takes note, and never waits.
    pub fn unleased(start: Delivered) -> Self {
        Self {
            recorded: None,
            ..delivery_record(start).0
        }
    }

    /// Takes note of a message Kinesis acknowledged (waking the lease writer when it
    /// changes `Delivered`).
    pub fn acknowledged(&self, message: &LcaMessage) {
        self.delivered.send_if_modified(|v| {
            let changed = v.delivered.record(message);
            v.version += u64::from(changed);
            changed
        });
    }

    /// Returns once the lease has recorded every change acknowledged so far. Never returns
    /// when the lease writer is gone: its hold has ended, and the run is being stopped.
    pub async fn until_recorded(&mut self) {
        let wanted = self.delivered.borrow().version;
        let Some(recorded) = &mut self.recorded else {
            return;
        };
        if recorded.wait_for(|r| *r >= wanted).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A view of what Kinesis acknowledged, for after the run.
    pub fn watch(&self) -> watch::Receiver<Versioned> {
        self.delivered.subscribe()
    }
}

/// Whether publishing `message` could change `Delivered` (so it waits for the lease).
pub fn changes_delivered(message: &LcaMessage) -> bool {
    let mut probe = Delivered::default();
    probe.record(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lca_events::{SegmentMapper, TranscriptResult};

    fn final_segment(end_s: f64) -> LcaMessage {
        let mapper = SegmentMapper {
            call_id: "c".to_string(),
            time_offset_s: 0.0,
            save_partials: true,
        };
        mapper
            .transcript(
                &TranscriptResult {
                    channel_id: Some("ch_0".to_string()),
                    start_time: end_s - 1.0,
                    end_time: end_s,
                    is_partial: false,
                    transcript: "x".to_string(),
                    items: Vec::new(),
                },
                "2026-01-01T00:00:00.000Z",
            )
            .expect("a final segment")
    }

    #[tokio::test]
    async fn a_change_waits_until_the_lease_has_recorded_it() {
        let (mut record, lease) = delivery_record(Delivered::default());
        // Nothing acknowledged yet: nothing to wait for.
        record.until_recorded().await;
        let first = final_segment(2.0);
        assert!(changes_delivered(&first));
        record.acknowledged(&first);
        assert_eq!(lease.delivered.borrow().version, 1);
        let wait = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            record.until_recorded(),
        );
        assert!(wait.await.is_err(), "not recorded yet");
        lease.recorded.send(1).unwrap();
        record.until_recorded().await;
        // An older final changes nothing: no new version.
        record.acknowledged(&final_segment(1.0));
        assert_eq!(lease.delivered.borrow().version, 1);
        assert_eq!(
            record.watch().borrow().delivered.final_end_ms[0],
            Some(2000)
        );
        // The lease writer gone (its hold ended): the publisher never goes on.
        record.acknowledged(&final_segment(3.0));
        drop(lease);
        let wait = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            record.until_recorded(),
        );
        assert!(wait.await.is_err());
        // Without a lease: noted, never waited for.
        let mut unleased = DeliveryRecord::unleased(Delivered::default());
        unleased.acknowledged(&final_segment(2.0));
        unleased.until_recorded().await;
        assert_eq!(
            unleased.watch().borrow().delivered.final_end_ms[0],
            Some(2000)
        );
    }
}
