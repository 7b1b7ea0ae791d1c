//! A call's stereo audio from a GetMedia stream read offline, attributing whole fragments
//! (`lca-kvs extract`, the benches and the fuzz target).

use std::collections::HashMap;

use crate::{AssembleError, AssemblerConfig, Channel, StereoAssembler, StereoChunk};
use kvs_media::{KvsError, MediaBlock, MediaEvent, TAG_CONTACT_ID, TrackInfo, TrackRole};

/// Blocks held for one fragment at most. KVS fragments hold about 32 (1 s, two tracks); a
/// capture without fragment boundaries is committed in pieces of this size instead of being
/// held whole in memory.
const MAX_PENDING_BLOCKS: usize = 4096;

/// Why extraction stopped before the end of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractStop {
    /// A fragment belongs to another contact (the stream was reused for the next call).
    OtherContact {
        /// The contact being extracted.
        expected: String,
        /// The ContactId of the fragment that was not taken.
        found: String,
    },
    /// KVS sent an error chunk.
    KvsError(KvsError),
}

/// Offline extraction of one contact's audio: a fragment's blocks are held until the fragment
/// is complete (Connect tags the ContactId after the cluster), then placed if the fragment
/// belongs to the contact. Reading should stop once [`CallExtractor::stopped`] is set.
#[derive(Debug)]
pub struct CallExtractor {
    contact: Option<String>,
    roles: HashMap<u64, TrackRole>,
    saw_connect_tracks: bool,
    pending: Vec<(Channel, MediaBlock)>,
    pending_contact: Option<String>,
    assembler: StereoAssembler,
    stopped: Option<ExtractStop>,
    fragments: u64,
}

impl CallExtractor {
    /// Extracts `contact_id`'s audio, or the first contact seen when `None`.
    pub fn new(contact_id: Option<String>, config: AssemblerConfig) -> Self {
        Self {
            contact: contact_id,
            roles: HashMap::new(),
            saw_connect_tracks: false,
            pending: Vec::new(),
            pending_contact: None,
            assembler: StereoAssembler::new(config),
            stopped: None,
            fragments: 0,
        }
    }

    /// Why extraction stopped early, if it did.
    pub fn stopped(&self) -> Option<&ExtractStop> {
        self.stopped.as_ref()
    }

    /// Whether any track table named a Connect audio track.
    pub fn saw_connect_tracks(&self) -> bool {
        self.saw_connect_tracks
    }

    /// The contact being extracted (the first seen, unless given).
    pub fn contact_id(&self) -> Option<&str> {
        self.contact.as_deref()
    }

    /// Fragments whose audio was taken.
    pub fn fragments(&self) -> u64 {
        self.fragments
    }

    /// The assembler, for its statistics.
    pub fn assembler(&self) -> &StereoAssembler {
        &self.assembler
    }

    /// Takes one event. Events after a stop are ignored.
    pub fn handle(&mut self, event: MediaEvent) -> Result<(), AssembleError> {
        if self.stopped.is_some() {
            return Ok(());
        }
        match event {
            MediaEvent::Tracks(tracks) => self.set_tracks(&tracks),
            MediaEvent::Block(block) => {
                // Role as the track table says when the block arrives.
                let channel = match self.roles.get(&block.track) {
                    Some(TrackRole::Caller) => Some(Channel::Caller),
                    Some(TrackRole::Agent) => Some(Channel::Agent),
                    None => None,
                };
                if let Some(channel) = channel {
                    self.pending.push((channel, block));
                    if self.pending.len() >= MAX_PENDING_BLOCKS {
                        self.commit()?;
                    }
                }
            }
            MediaEvent::Tag(tag) if tag.name == TAG_CONTACT_ID => {
                self.pending_contact = tag.value.as_str().map(str::to_string);
            }
            MediaEvent::Tag(_) => {}
            MediaEvent::FragmentStart(_) | MediaEvent::FragmentEnd(_) => self.commit()?,
            MediaEvent::Error(error) => {
                self.commit()?;
                self.stop(ExtractStop::KvsError(error));
            }
        }
        Ok(())
    }

    /// The input ended cleanly: the last fragment is complete.
    pub fn finish(&mut self) -> Result<(), AssembleError> {
        if self.stopped.is_none() {
            self.commit()?;
        }
        self.assembler.finish();
        Ok(())
    }

    /// The input ended in the middle of a fragment (truncated): that fragment is dropped.
    pub fn abandon(&mut self) {
        self.pending.clear();
        self.assembler.finish();
    }

    /// The next stereo chunk ready to write.
    pub fn pop_chunk(&mut self) -> Option<StereoChunk> {
        self.assembler.pop_chunk()
    }

    fn set_tracks(&mut self, tracks: &[TrackInfo]) {
        self.roles = tracks
            .iter()
            .filter_map(|t| Some((t.number, t.role?)))
            .collect();
        self.saw_connect_tracks |= !self.roles.is_empty();
    }

    fn stop(&mut self, reason: ExtractStop) {
        self.pending.clear();
        self.stopped = Some(reason);
    }

    fn commit(&mut self) -> Result<(), AssembleError> {
        let contact = self.pending_contact.take();
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(found) = contact {
            match &self.contact {
                None => self.contact = Some(found),
                Some(expected) if *expected != found => {
                    let expected = expected.clone();
                    self.stop(ExtractStop::OtherContact { expected, found });
                    return Ok(());
                }
                Some(_) => {}
            }
        }
        self.fragments += 1;
        for (channel, block) in std::mem::take(&mut self.pending) {
            self.assembler
                .push(channel, block.timestamp_ns, &block.payload)?;
        }
        self.assembler.sync();
        Ok(())
    }
}
