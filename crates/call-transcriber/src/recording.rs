//! The call recording in S3: `<RECORDING_FILE_PREFIX><CallId>.wav`, stereo 8 kHz 16-bit
//! (caller left, agent right), written without holding the call in memory or on Lambda's
//! `/tmp`.
//!
//! Each invocation streams its share of the call as one raw PCM *piece*,
//! `<RAW_FILE_PREFIX><CallId>/<first sample, 16 digits>.pcm`, uploading 5 MiB parts as they
//! fill. The key is fixed by where the invocation starts, so an invocation retried after a
//! crash rewrites the same piece. When the call ends, [`Recorder::assemble`] checks that the
//! pieces join up sample for sample and joins them inside S3: a multipart upload of the WAV
//! whose first part is the header with the first piece's leading bytes and whose other parts
//! S3 copies from byte ranges of the pieces (UploadPartCopy, laid out by [`plan_join`]), so
//! the audio of a long call does not pass through the function. Then every version of the
//! pieces is deleted. Memory stays at about two parts.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::BytesMut;
use call_audio::{CONNECT_SAMPLE_RATE, StereoChunk, wav_header};
use tokio::sync::mpsc;

use aws_edge::error_text;

/// Bytes per stereo frame (two 16-bit samples).
const FRAME_BYTES: u64 = 4;

/// S3's smallest part (every part of a multipart upload but the last).
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// What a key keeps unencoded in an UploadPartCopy source: letters, digits, `-._~` and the
/// `/` between folders.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// One invocation's share of a call's audio in S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Its key.
    pub key: String,
    /// Call sample of its first frame.
    pub start_sample: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

impl Piece {
    /// Call sample after its last frame.
    pub fn end_sample(&self) -> u64 {
        self.start_sample + self.bytes / FRAME_BYTES
    }
}

/// The folder of a call's pieces.
pub fn pieces_prefix(raw_prefix: &str, call_id: &str) -> String {
    format!("{raw_prefix}{call_id}/")
}

/// The key of the piece starting at `start_sample`.
pub fn piece_key(raw_prefix: &str, call_id: &str, start_sample: u64) -> String {
    format!(
        "{}{start_sample:016}.pcm",
        pieces_prefix(raw_prefix, call_id)
    )
}

/// Orders a call's pieces and checks that they cover the call from sample 0 without a gap
/// or an overlap; returns the audio's length in bytes. The error names the pieces at fault.
pub fn join_pieces(pieces: &mut [Piece]) -> Result<u64, String> {
    pieces.sort_by_key(|p| p.start_sample);
    let mut expected = 0u64;
    let mut previous = "the start of the call".to_string();
    for piece in pieces.iter() {
        if piece.bytes % FRAME_BYTES != 0 {
            return Err(format!(
                "{} is {} bytes, not whole stereo frames",
                piece.key, piece.bytes
            ));
        }
        if piece.start_sample != expected {
            let what = if piece.start_sample > expected {
                "a gap"
            } else {
                "an overlap"
            };
            return Err(format!(
                "{what} between {previous} (ends at sample {expected}) and {} (starts at sample {})",
                piece.key, piece.start_sample
            ));
        }
        expected = piece.end_sample();
        previous = piece.key.clone();
    }
    Ok(expected * FRAME_BYTES)
}

/// S3's largest part, also of UploadPartCopy ("Part size: 5 MiB to 5 GiB", Amazon S3 user
/// guide, Amazon S3 multipart upload limits).
pub const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// A stretch of the joined WAV's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The WAV header.
    Header,
    /// Bytes `start..end` of piece `piece` (an index into the pieces joined).
    Piece {
        /// Which piece.
        piece: usize,
        /// First byte.
        start: u64,
        /// Byte after the last.
        end: u64,
    },
}

/// One part of the joined WAV's multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedPart {
    /// Bytes that pass through the function (read from the pieces and uploaded): the
    /// header, and whatever is too short to be a part of its own.
    Upload(Vec<Span>),
    /// A range of one piece that S3 copies into the part itself (UploadPartCopy): no audio
    /// passes through the function.
    Copy {
        /// Which piece.
        piece: usize,
        /// First byte.
        start: u64,
        /// Byte after the last.
        end: u64,
    },
}

impl PlannedPart {
    /// The part's size, given the header's and the pieces' sizes.
    pub fn len(&self, header: u64) -> u64 {
        match self {
            Self::Upload(spans) => spans
                .iter()
                .map(|span| match span {
                    Span::Header => header,
                    Span::Piece { start, end, .. } => end - start,
                })
                .sum(),
            Self::Copy { start, end, .. } => end - start,
        }
    }
}

/// Lays out the joined WAV (the header, then pieces of `sizes` bytes in order) as parts of a
/// multipart upload, so that as little audio as possible passes through the function: every
/// part but the last at least [`PART_BYTES`] and at most [`MAX_PART_BYTES`] (S3's limits).
/// The header needs company to make a part: it goes up with the first piece's leading
/// bytes; a piece (or a piece's tail) shorter than a part goes up with its neighbours. The
/// rest is copied inside S3, only ever from a piece larger than a part: "You can copy a
/// range only if the source object is greater than 5 MB" (UploadPartCopy API reference,
/// x-amz-copy-source-range). At most about two parts' worth of a piece is uploaded.
pub fn plan_join(header: u64, sizes: &[u64]) -> Vec<PlannedPart> {
    let min = PART_BYTES as u64;
    let mut parts = Vec::new();
    let mut pending = vec![Span::Header];
    let mut pending_len = header;
    let flush = |parts: &mut Vec<PlannedPart>, pending: &mut Vec<Span>, len: &mut u64| {
        if !pending.is_empty() {
            parts.push(PlannedPart::Upload(std::mem::take(pending)));
        }
        *len = 0;
    };
    for (piece, &size) in sizes.iter().enumerate() {
        let mut position = 0;
        if !pending.is_empty() {
            // Fill the part being uploaded up to its minimum from this piece's start.
            let take = (min.saturating_sub(pending_len)).min(size);
            if take > 0 {
                pending.push(Span::Piece {
                    piece,
                    start: 0,
                    end: take,
                });
                pending_len += take;
                position = take;
            }
            let rest = size - position;
            if pending_len >= min {
                if rest > 0 && rest < min {
                    // A tail too short to be a part of its own rides along.
                    pending.push(Span::Piece {
                        piece,
                        start: position,
                        end: size,
                    });
                    position = size;
                }
                flush(&mut parts, &mut pending, &mut pending_len);
            }
        }
        let rest = size - position;
        if rest == 0 {
            continue;
        }
        if rest >= min && size > min {
            // Copied inside S3, in pieces of at most MAX_PART_BYTES and (being equal) at
            // least half that.
            let count = rest.div_ceil(MAX_PART_BYTES);
            for k in 0..count {
                parts.push(PlannedPart::Copy {
                    piece,
                    start: position + rest * k / count,
                    end: position + rest * (k + 1) / count,
                });
            }
        } else {
            pending.push(Span::Piece {
                piece,
                start: position,
                end: size,
            });
            pending_len += rest;
        }
    }
    flush(&mut parts, &mut pending, &mut pending_len);
    parts
}

/// Why the recording could not be written.
#[derive(Debug, thiserror::Error)]
#[error("recording s3://{bucket}/{key}: {operation}: {message}")]
pub struct RecordingError {
    /// The bucket.
    pub bucket: String,
    /// The object.
    pub key: String,
    /// What was being done.
    pub operation: &'static str,
    /// What went wrong.
    pub message: String,
}

/// The recording that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Its key (`<RECORDING_FILE_PREFIX><CallId>.wav`).
    pub key: String,
    /// The WAV's size in bytes, header included.
    pub bytes: u64,
    /// How many pieces it was joined from.
    pub pieces: usize,
    /// Bytes of audio that passed through the function (the rest S3 copied itself).
    pub uploaded_bytes: u64,
    /// An earlier attempt had joined it: this one found it complete and only cleared what
    /// was left of the pieces.
    pub already_joined: bool,
}

/// Writes recordings into one bucket.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// S3.
    pub s3: aws_sdk_s3::Client,
    /// `OUTPUT_BUCKET`.
    pub bucket: String,
    /// `RAW_FILE_PREFIX`: where the pieces go.
    pub raw_prefix: String,
    /// `RECORDING_FILE_PREFIX`: where the WAV goes.
    pub recording_prefix: String,
}

/// A multipart upload in progress.
struct Upload {
    key: String,
    id: String,
    parts: Vec<CompletedPart>,
}

/// One object being written: buffered into parts of a multipart upload as they fill, or put
/// whole if it stays shorter than a part.
struct ObjectWriter {
    key: String,
    upload: Option<Upload>,
    buffer: BytesMut,
}

impl ObjectWriter {
    fn new(key: String) -> Self {
        Self {
            key,
            upload: None,
            // Room for the write that fills a part, so the buffer is never reallocated.
            buffer: BytesMut::with_capacity(PART_BYTES + 64 * 1024),
        }
    }
}

/// The content type of a recording object.
fn content_type(key: &str) -> &'static str {
    if key.ends_with(".wav") {
        "audio/wav"
    } else {
        "application/octet-stream"
    }
}

impl Recorder {
    fn error(&self, key: &str, operation: &'static str, message: String) -> RecordingError {
        RecordingError {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            operation,
            message,
        }
    }

    /// The WAV's key for `call_id`.
    pub fn recording_key(&self, call_id: &str) -> String {
        format!("{}{call_id}.wav", self.recording_prefix)
    }

    /// Records the chunks of one invocation (until the channel closes) as one piece. `None`
    /// when there was no audio.
    pub async fn record_piece(
        &self,
        call_id: &str,
        mut chunks: mpsc::Receiver<StereoChunk>,
    ) -> Result<Option<Piece>, RecordingError> {
        let Some(first) = chunks.recv().await else {
            return Ok(None);
        };
        let start_sample = first.start_sample;
        let key = piece_key(&self.raw_prefix, call_id, start_sample);
        // A crashed attempt at this piece may have left an upload open: it is never completed.
        // Best effort: an upload left behind costs storage, not correctness.
        if let Err(error) = self.abort_uploads(&key).await {
            tracing::warn!(%error, "could not look for open uploads of a crashed attempt");
        }
        let mut object = ObjectWriter::new(key.clone());
        let mut next_sample = start_sample;
        let mut total = 0u64;
        let mut chunk = Some(first);
        let result: Result<(), RecordingError> = async {
            while let Some(c) = chunk.take() {
                if c.start_sample != next_sample {
                    return Err(self.error(
                        &key,
                        "recording",
                        format!(
                            "audio jumps from sample {next_sample} to {} (chunks must be contiguous)",
                            c.start_sample
                        ),
                    ));
                }
                next_sample = c.start_sample + c.samples as u64;
                total += c.pcm.len() as u64;
                self.write(&mut object, &c.pcm).await?;
                chunk = chunks.recv().await;
            }
            Ok(())
        }
        .await;
        self.finish(object, result).await?;
        Ok(Some(Piece {
            key,
            start_sample,
            bytes: total,
        }))
    }

    /// Joins the call's pieces into the WAV and deletes them. Idempotent: an attempt retried
    /// after an earlier one joined the WAV and deleted some or all pieces (it crashed before
    /// the call's end was recorded) finds the pieces no longer joining up from the start and
    /// the WAV in place; it keeps that WAV and deletes what is left of the pieces (the
    /// retry's own piece among them).
    pub async fn assemble(&self, call_id: &str) -> Result<Recording, RecordingError> {
        let key = self.recording_key(call_id);
        let mut pieces = self.list_pieces(call_id).await?;
        let joined = join_pieces(&mut pieces);
        // Joined already by an attempt that stopped before the pieces were deleted (or with
        // them gone): kept as it is, since in LCA's versioned bucket joining again would
        // leave the first WAV behind as a non-current version (S3 user guide, "Retaining
        // multiple versions of objects with S3 Versioning").
        let joined_size = joined
            .as_ref()
            .ok()
            .map(|data| data + call_audio::WAV_HEADER_BYTES as u64);
        if let Some(bytes) = self.existing_size(&key).await?
            && (pieces.is_empty() || joined_size.is_none_or(|size| size == bytes))
        {
            self.purge_pieces(call_id).await?;
            return Ok(Recording {
                key,
                bytes,
                pieces: 0,
                uploaded_bytes: 0,
                already_joined: true,
            });
        }
        let data_bytes = joined.map_err(|problem| self.error(&key, "joining pieces", problem))?;
        let header = wav_header(CONNECT_SAMPLE_RATE, data_bytes).ok_or_else(|| {
            self.error(
                &key,
                "joining pieces",
                format!("{data_bytes} bytes of audio do not fit a WAV"),
            )
        })?;
        // A join that stopped midway (a crash, a timeout) left its upload open: it is never
        // completed, and is aborted so that its parts are not kept (and billed) for ever.
        // Best effort, as for a piece.
        if let Err(error) = self.abort_uploads(&key).await {
            tracing::warn!(%error, "could not look for open uploads of a join that stopped");
        }
        let sizes: Vec<u64> = pieces.iter().map(|p| p.bytes).collect();
        let plan = plan_join(header.len() as u64, &sizes);
        let mut object = ObjectWriter::new(key.clone());
        let result: Result<(), RecordingError> = async {
            for part in &plan {
                match part {
                    PlannedPart::Upload(spans) => {
                        for span in spans {
                            match *span {
                                Span::Header => object.buffer.extend_from_slice(&header),
                                Span::Piece { piece, start, end } => {
                                    self.read_range(&pieces[piece].key, start, end, &mut object)
                                        .await?;
                                }
                            }
                        }
                        // A WAV of one part is put whole (by `finish`).
                        if plan.len() > 1 {
                            self.upload_part(&object.key, &mut object.upload, &mut object.buffer)
                                .await?;
                        }
                    }
                    PlannedPart::Copy { piece, start, end } => {
                        self.copy_part(&mut object, &pieces[*piece].key, *start, *end)
                            .await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        self.finish(object, result).await?;
        self.purge_pieces(call_id).await?;
        let uploaded_bytes = plan
            .iter()
            .filter(|part| matches!(part, PlannedPart::Upload(_)))
            .map(|part| part.len(0))
            .sum();
        Ok(Recording {
            key,
            bytes: data_bytes + header.len() as u64,
            pieces: pieces.len(),
            uploaded_bytes,
            already_joined: false,
        })
    }

    /// The size of object `key`, `None` when there is none. Asked by listing the key as a
    /// prefix, not by HeadObject: HeadObject tells a missing key (404) from a forbidden one
    /// (403) only to a caller with s3:ListBucket on the bucket (S3 API reference,
    /// HeadObject), and whether a ListBucket grant limited to a prefix counts is not
    /// documented; a listing under the recordings' prefix is what the template grants.
    async fn existing_size(&self, key: &str) -> Result<Option<u64>, RecordingError> {
        let page = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| self.error(key, "ListObjectsV2", error_text(&e)))?;
        Ok(page
            .contents()
            .iter()
            .find(|object| object.key() == Some(key))
            .map(|object| object.size().unwrap_or(0).max(0) as u64))
    }

    /// Appends bytes `start..end` of object `key` to `object`'s buffer.
    async fn read_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        object: &mut ObjectWriter,
    ) -> Result<(), RecordingError> {
        let response = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| self.error(key, "GetObject", error_text(&e)))?;
        let before = object.buffer.len();
        let mut body = response.body;
        while let Some(bytes) = body
            .try_next()
            .await
            .map_err(|e| self.error(key, "GetObject (body)", e.to_string()))?
        {
            object.buffer.extend_from_slice(&bytes);
        }
        let read = (object.buffer.len() - before) as u64;
        if read != end - start {
            return Err(self.error(
                key,
                "GetObject",
                format!(
                    "bytes {start}-{}: {read} bytes instead of {}",
                    end - 1,
                    end - start
                ),
            ));
        }
        Ok(())
    }

    /// Adds bytes `start..end` of object `key` to `object`'s upload as its next part, copied
    /// by S3 (UploadPartCopy with a byte range).
    async fn copy_part(
        &self,
        object: &mut ObjectWriter,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<(), RecordingError> {
        let upload = self.started(&object.key, &mut object.upload).await?;
        let number = upload.parts.len() as i32 + 1;
        // CopySource is "the name of the source bucket and the key of the source object,
        // separated by a slash (/)... The value must be URL-encoded" (UploadPartCopy API
        // reference).
        let source = format!(
            "{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(key, COPY_SOURCE)
        );
        let output = self
            .s3
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.id)
            .part_number(number)
            .copy_source(source)
            .copy_source_range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| self.error(key, "UploadPartCopy", error_text(&e)))?;
        let e_tag = output.copy_part_result.and_then(|r| r.e_tag);
        upload.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(e_tag)
                .build(),
        );
        Ok(())
    }

    /// The call's pieces as stored.
    async fn list_pieces(&self, call_id: &str) -> Result<Vec<Piece>, RecordingError> {
        let prefix = pieces_prefix(&self.raw_prefix, call_id);
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut pieces = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error(&prefix, "ListObjectsV2", error_text(&e)))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let start = key
                    .strip_prefix(&prefix)
                    .and_then(|name| name.strip_suffix(".pcm"))
                    .and_then(|digits| digits.parse::<u64>().ok());
                match start {
                    Some(start_sample) => pieces.push(Piece {
                        key: key.to_string(),
                        start_sample,
                        bytes: object.size().unwrap_or(0).max(0) as u64,
                    }),
                    None => tracing::warn!(key, "not a recording piece; left out"),
                }
            }
        }
        Ok(pieces)
    }

    /// Aborts every multipart upload under `prefix` (a piece's key, or a call's pieces'
    /// folder): uploads that invocations which crashed left open, never to be completed.
    async fn abort_uploads(&self, prefix: &str) -> Result<(), RecordingError> {
        let (mut key_marker, mut upload_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .s3
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| self.error(prefix, "ListMultipartUploads", error_text(&e)))?;
            for upload in page.uploads() {
                if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                    self.abandon(Some(Upload {
                        key: key.to_string(),
                        id: id.to_string(),
                        parts: Vec::new(),
                    }))
                    .await;
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(());
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_marker = page.next_upload_id_marker().map(str::to_string);
        }
    }

    /// Appends `bytes` to `object`, uploading a part whenever one is full.
    async fn write(&self, object: &mut ObjectWriter, bytes: &[u8]) -> Result<(), RecordingError> {
        object.buffer.extend_from_slice(bytes);
        if object.buffer.len() >= PART_BYTES {
            self.upload_part(&object.key, &mut object.upload, &mut object.buffer)
                .await?;
        }
        Ok(())
    }

    /// Completes `object` after writing it ended with `written`; on any error its upload is
    /// aborted (it never becomes visible) and the error returned.
    async fn finish(
        &self,
        mut object: ObjectWriter,
        written: Result<(), RecordingError>,
    ) -> Result<(), RecordingError> {
        let mut written = written;
        if written.is_ok() && object.upload.is_some() && !object.buffer.is_empty() {
            written = self
                .upload_part(&object.key, &mut object.upload, &mut object.buffer)
                .await;
        }
        if let Err(error) = written {
            self.abandon(object.upload).await;
            return Err(error);
        }
        if object.upload.is_some() {
            return self.complete(object.upload).await;
        }
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&object.key)
            .content_type(content_type(&object.key))
            .body(ByteStream::from(object.buffer.freeze()))
            .send()
            .await
            .map_err(|e| self.error(&object.key, "PutObject", error_text(&e)))?;
        Ok(())
    }

    /// Uploads what `part` holds as the next part, starting the upload if needed, and empties
    /// it. The buffer is handed back for the next part once the SDK lets go of it: one part's
    /// worth of memory for a whole recording, instead of a fresh 5 MiB block per part (which
    /// the allocator keeps around).
    async fn upload_part(
        &self,
        key: &str,
        upload: &mut Option<Upload>,
        part: &mut BytesMut,
    ) -> Result<(), RecordingError> {
        let upload = self.started(key, upload).await?;
        let number = upload.parts.len() as i32 + 1;
        let bytes = std::mem::take(part).freeze();
        let output = self
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload.id)
            .part_number(number)
            .body(ByteStream::from(bytes.clone()))
            .send()
            .await
            .map_err(|e| self.error(key, "UploadPart", error_text(&e)))?;
        *part = match bytes.try_into_mut() {
            Ok(mut reclaimed) => {
                reclaimed.clear();
                reclaimed
            }
            Err(_) => BytesMut::with_capacity(PART_BYTES),
        };
        upload.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(output.e_tag)
                .build(),
        );
        Ok(())
    }

    /// `upload`, started now (CreateMultipartUpload of `key`) if it was not yet.
    async fn started<'u>(
        &self,
        key: &str,
        upload: &'u mut Option<Upload>,
    ) -> Result<&'u mut Upload, RecordingError> {
        Ok(match upload {
            Some(upload) => upload,
            None => {
                let created = self
                    .s3
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .content_type(content_type(key))
                    .send()
                    .await
                    .map_err(|e| self.error(key, "CreateMultipartUpload", error_text(&e)))?;
                let id = created.upload_id.ok_or_else(|| {
                    self.error(
                        key,
                        "CreateMultipartUpload",
                        "no UploadId in the answer".to_string(),
                    )
                })?;
                upload.insert(Upload {
                    key: key.to_string(),
                    id,
                    parts: Vec::new(),
                })
            }
        })
    }

    async fn complete(&self, upload: Option<Upload>) -> Result<(), RecordingError> {
        let Some(upload) = upload else {
            return Ok(());
        };
        let result = self
            .s3
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(upload.parts.clone()))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = result {
            let error = self.error(&upload.key, "CompleteMultipartUpload", error_text(&e));
            self.abandon(Some(upload)).await;
            return Err(error);
        }
        Ok(())
    }

    /// Aborts an upload (best effort: what it leaves is never visible as an object).
    async fn abandon(&self, upload: Option<Upload>) {
        let Some(upload) = upload else { return };
        if let Err(e) = self
            .s3
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.key)
            .upload_id(&upload.id)
            .send()
            .await
        {
            tracing::warn!(key = %upload.key, error = %error_text(&e), "could not abort a multipart upload");
        }
    }

    /// Removes every trace of the call's pieces (raw call audio) once the WAV holds them: the
    /// multipart uploads left open under the call's prefix (invocations that crashed), then
    /// every version of every piece and every delete marker. A delete without a version id
    /// is not enough: "If bucket versioning is enabled, the operation inserts a delete
    /// marker ... To permanently delete an object in a versioned bucket, you must include
    /// the object's versionId" (S3 API reference, DeleteObject), and LCA's bucket is
    /// versioned. In a bucket without versioning the listing gives each object with the
    /// version id `null`, which deletes it as well. Needs s3:ListBucketMultipartUploads,
    /// s3:AbortMultipartUpload, s3:ListBucketVersions and s3:DeleteObjectVersion.
    async fn purge_pieces(&self, call_id: &str) -> Result<(), RecordingError> {
        let prefix = pieces_prefix(&self.raw_prefix, call_id);
        self.abort_uploads(&prefix).await?;
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .s3
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.error(&prefix, "ListObjectVersions", error_text(&e)))?;
            let versions = page
                .versions()
                .iter()
                .map(|v| (v.key(), v.version_id()))
                .chain(
                    page.delete_markers()
                        .iter()
                        .map(|m| (m.key(), m.version_id())),
                );
            let objects: Vec<ObjectIdentifier> = versions
                .filter_map(|(key, version)| {
                    ObjectIdentifier::builder()
                        .key(key?)
                        .set_version_id(version.map(str::to_string))
                        .build()
                        .ok()
                })
                .collect();
            self.delete(&prefix, objects).await?;
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
        Ok(())
    }

    /// Deletes `objects`, 1000 to a request (DeleteObjects' limit).
    async fn delete(
        &self,
        prefix: &str,
        objects: Vec<ObjectIdentifier>,
    ) -> Result<(), RecordingError> {
        for batch in objects.chunks(1000) {
            self.delete_batch(prefix, batch.to_vec()).await?;
        }
        Ok(())
    }

    async fn delete_batch(
        &self,
        prefix: &str,
        objects: Vec<ObjectIdentifier>,
    ) -> Result<(), RecordingError> {
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| self.error(prefix, "DeleteObjects", e.to_string()))?;
        let output = self
            .s3
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| self.error(prefix, "DeleteObjects", error_text(&e)))?;
        if let Some(failed) = output.errors().first() {
            return Err(self.error(
                failed.key().unwrap_or(prefix),
                "DeleteObjects",
                format!(
                    "version {}: {}",
                    failed.version_id().unwrap_or("-"),
                    failed.message().unwrap_or("failed")
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    /// The bytes a plan writes, as (piece, start, end) runs with the header as piece
    /// `usize::MAX`, merged where they continue each other.
    fn runs(parts: &[PlannedPart], header: u64) -> Vec<(usize, u64, u64)> {
        let mut runs: Vec<(usize, u64, u64)> = Vec::new();
        let spans = parts.iter().flat_map(|part| match part {
            PlannedPart::Upload(spans) => spans.clone(),
            PlannedPart::Copy { piece, start, end } => vec![Span::Piece {
                piece: *piece,
                start: *start,
                end: *end,
            }],
        });
        for span in spans {
            let (piece, start, end) = match span {
                Span::Header => (usize::MAX, 0, header),
                Span::Piece { piece, start, end } => (piece, start, end),
            };
            match runs.last_mut() {
                Some(last) if last.0 == piece && last.2 == start => last.2 = end,
                _ => runs.push((piece, start, end)),
            }
        }
        runs
    }

    fn check(header: u64, sizes: &[u64]) -> Vec<PlannedPart> {
        let parts = plan_join(header, sizes);
        let mut expected = vec![(usize::MAX, 0, header)];
        expected.extend(
            sizes
                .iter()
                .enumerate()
                .filter(|(_, size)| **size > 0)
                .map(|(i, size)| (i, 0, *size)),
        );
        assert_eq!(runs(&parts, header), expected, "every byte once, in order");
        for (i, part) in parts.iter().enumerate() {
            let len = part.len(header);
            assert!(len <= MAX_PART_BYTES, "part {i}: {len}");
            if i + 1 < parts.len() {
                assert!(
                    len >= PART_BYTES as u64,
                    "part {i} of {}: {len}",
                    parts.len()
                );
            }
            match part {
                PlannedPart::Upload(spans) => {
                    assert!(
                        len < 2 * PART_BYTES as u64 + header,
                        "part {i}: {len} uploaded"
                    );
                    assert!(!spans.is_empty());
                }
                PlannedPart::Copy { piece, .. } => {
                    assert!(
                        sizes[*piece] > PART_BYTES as u64,
                        "part {i}: copied from a small piece"
                    );
                }
            }
        }
        assert!(parts.len() <= 10_000);
        parts
    }

    #[test]
    fn a_long_call_is_copied_inside_s3_but_for_the_header_and_its_first_bytes() {
        // Six hours: thirty pieces of twelve minutes (23 MB each).
        let piece = 12 * 60 * 8000 * 4;
        let parts = check(44, &[piece; 30]);
        let uploaded: u64 = parts
            .iter()
            .filter(|p| matches!(p, PlannedPart::Upload(_)))
            .map(|p| p.len(44))
            .sum();
        assert_eq!(uploaded, PART_BYTES as u64, "one part through the function");
        assert_eq!(parts.len(), 31);
        // A call shorter than a part is one part, uploaded.
        assert_eq!(check(44, &[1000, 2000]).len(), 1);
        // No audio: the header alone.
        assert_eq!(check(44, &[]), [PlannedPart::Upload(vec![Span::Header])]);
        // Short pieces in the middle ride with their neighbours; a short last piece is
        // uploaded (S3 copies a range only from an object larger than 5 MB).
        let parts = check(44, &[6 * MIB, 12 * MIB, MIB]);
        assert_eq!(
            parts.last(),
            Some(&PlannedPart::Upload(vec![Span::Piece {
                piece: 2,
                start: 0,
                end: MIB
            }]))
        );
        check(44, &[6 * MIB, MIB, MIB, 6 * MIB, 3 * MIB]);
        check(44, &[5 * MIB, 5 * MIB, 5 * MIB]);
        check(44, &[5 * MIB - 44, 7 * MIB, 10, 0, 5 * MIB]);
        check(44, &[5 * MIB - 43, 4 * MIB, 12 * MIB]);
    }

    #[test]
    fn a_piece_larger_than_s3s_largest_part_is_copied_in_several() {
        // The header with the first bytes, three copies of the rest, the short last piece
        // uploaded.
        let parts = check(44, &[MAX_PART_BYTES * 2 + 7 * MIB, MIB]);
        assert_eq!(parts.len(), 5);
        assert!(matches!(parts[3], PlannedPart::Copy { piece: 0, .. }));
        assert!(matches!(parts[4], PlannedPart::Upload(_)));
    }

    proptest! {
        #[test]
        fn any_call_is_laid_out_within_s3s_limits(
            sizes in proptest::collection::vec(
                prop_oneof![0..2 * MIB, 4 * MIB..7 * MIB, 9 * MIB..40 * MIB],
                0..40,
            ),
        ) {
            check(44, &sizes);
        }
    }

    fn piece(start: u64, frames: u64) -> Piece {
        Piece {
            key: piece_key("raw/", "c", start),
            start_sample: start,
            bytes: frames * FRAME_BYTES,
        }
    }

    #[test]
    fn pieces_join_in_sample_order() {
        let mut pieces = vec![piece(100, 50), piece(0, 100), piece(150, 7)];
        assert_eq!(join_pieces(&mut pieces), Ok(157 * FRAME_BYTES));
        assert_eq!(pieces[0].key, "raw/c/0000000000000000.pcm");
        assert_eq!(join_pieces(&mut []), Ok(0));
    }

    #[test]
    fn gaps_and_overlaps_are_named() {
        let gap = join_pieces(&mut [piece(0, 100), piece(120, 5)]).unwrap_err();
        assert!(
            gap.contains("a gap") && gap.contains("0000000000000120.pcm") && gap.contains("100"),
            "{gap}"
        );
        let overlap = join_pieces(&mut [piece(0, 100), piece(90, 5)]).unwrap_err();
        assert!(overlap.contains("an overlap"), "{overlap}");
        let late = join_pieces(&mut [piece(8, 1)]).unwrap_err();
        assert!(late.contains("the start of the call"), "{late}");
        let ragged = join_pieces(&mut [Piece {
            bytes: 6,
            ..piece(0, 0)
        }])
        .unwrap_err();
        assert!(ragged.contains("whole stereo frames"), "{ragged}");
    }
}
