//! The S3 recording against moto's S3: pieces larger than a part (multipart uploads), a
//! recording joined from several of them into a multi-part WAV, a crashed attempt's open
//! upload, and pieces that do not join up.

mod common;

use call_audio::{StereoChunk, WAV_HEADER_BYTES, wav_header};
use call_transcriber::recording::{PART_BYTES, Recorder};
use common::*;
use local_aws::kvs::KvsOptions;
use local_aws::transcribe::TranscribeOptions;
use tokio::sync::mpsc;

fn recorder(h: &Harness) -> Recorder {
    Recorder {
        s3: h.s3.clone(),
        bucket: BUCKET.to_string(),
        raw_prefix: "lca-audio-raw/".to_string(),
        recording_prefix: "lca-audio-recordings/".to_string(),
    }
}

/// `frames` stereo frames of a pattern that differs per frame, from call sample `start`.
fn audio(start: u64, frames: u64) -> Vec<u8> {
    (start..start + frames)
        .flat_map(|i| {
            let left = (i % 65_521) as u16;
            let right = (i.wrapping_mul(7) % 65_519) as u16;
            [left.to_le_bytes(), right.to_le_bytes()].concat()
        })
        .collect()
}

/// Records call samples `start..start + frames` as one invocation would (100 ms chunks).
async fn record(recorder: &Recorder, call_id: &str, start: u64, frames: u64) {
    let (tx, rx) = mpsc::channel(64);
    let call_id = call_id.to_string();
    let recorder = recorder.clone();
    let task = tokio::spawn(async move { recorder.record_piece(&call_id, rx).await });
    let pcm = audio(start, frames);
    for (i, chunk) in pcm.chunks(3200).enumerate() {
        tx.send(StereoChunk {
            start_sample: start + i as u64 * 800,
            samples: chunk.len() / 4,
            pcm: chunk.to_vec(),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let piece = task.await.unwrap().unwrap().expect("a piece");
    assert_eq!((piece.start_sample, piece.bytes), (start, frames * 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_of_several_parts_join_into_one_wav() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let recorder = recorder(&h);
    // A crashed attempt left an upload of the first piece open.
    let stale =
        h.s3.create_multipart_upload()
            .bucket(BUCKET)
            .key("lca-audio-raw/call-1/0000000000000000.pcm")
            .send()
            .await
            .unwrap();
    // 12 MiB + a bit (three parts), then 1 s (one small object), then 6 MiB (two parts).
    let first = (2 * PART_BYTES as u64 + 2_000_000) / 4;
    record(&recorder, "call-1", 0, first).await;
    record(&recorder, "call-1", first, 8000).await;
    record(&recorder, "call-1", first + 8000, 6 * 1024 * 1024 / 4).await;
    let open =
        h.s3.list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
    assert!(
        open.uploads()
            .iter()
            .all(|u| u.upload_id() != stale.upload_id()),
        "the crashed attempt's upload was aborted"
    );
    assert_eq!(open.uploads().len(), 0, "no upload left open");

    let recording = recorder.assemble("call-1").await.unwrap();
    let frames = first + 8000 + 6 * 1024 * 1024 / 4;
    assert_eq!(recording.key, "lca-audio-recordings/call-1.wav");
    assert_eq!(recording.pieces, 3);
    // Through the function: the header's part (with the first piece's leading bytes), and
    // the short second piece with the whole third (its tail past one part is too short to be
    // copied, and S3 copies ranges only from objects larger than 5 MB); S3 copied the rest.
    assert_eq!(
        recording.uploaded_bytes,
        PART_BYTES as u64 - WAV_HEADER_BYTES as u64 + 8000 * 4 + 6 * 1024 * 1024
    );
    assert_eq!(recording.bytes, frames * 4 + WAV_HEADER_BYTES as u64);
    let wav = h.object("lca-audio-recordings/call-1.wav").await.unwrap();
    assert_eq!(wav.len() as u64, recording.bytes);
    assert_eq!(
        &wav[..WAV_HEADER_BYTES],
        &wav_header(8000, frames * 4).unwrap()
    );
    assert!(
        wav[WAV_HEADER_BYTES..] == audio(0, frames)[..],
        "the WAV holds every sample once, in order"
    );
    let parts =
        h.s3.head_object()
            .bucket(BUCKET)
            .key("lca-audio-recordings/call-1.wav")
            .part_number(1)
            .send()
            .await
            .unwrap()
            .parts_count;
    // The header's part, the copy of the first piece's rest, the short pieces' part.
    assert_eq!(parts, Some(3), "{parts:?} parts");
    assert_eq!(
        h.keys("lca-audio-raw/").await,
        Vec::<String>::new(),
        "pieces deleted"
    );
    // hound reads it as the stereo 8 kHz WAV it claims to be.
    let reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
    assert_eq!(reader.spec(), call_audio::wav_spec(8000));
    assert_eq!(u64::from(reader.duration()), frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_between_pieces_is_an_error_that_names_them() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let recorder = recorder(&h);
    record(&recorder, "call-2", 0, 8000).await;
    record(&recorder, "call-2", 9000, 8000).await;
    let error = recorder.assemble("call-2").await.unwrap_err().to_string();
    assert!(
        error.contains("lca-audio-recordings/call-2.wav")
            && error.contains("a gap")
            && error.contains("0000000000009000.pcm"),
        "{error}"
    );
    assert!(h.object("lca-audio-recordings/call-2.wav").await.is_none());
    assert_eq!(
        h.keys("lca-audio-raw/call-2/").await.len(),
        2,
        "pieces kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_audio_is_an_empty_wav() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let recording = recorder(&h).assemble("call-3").await.unwrap();
    assert_eq!(recording.bytes, WAV_HEADER_BYTES as u64);
    let wav = h.object("lca-audio-recordings/call-3.wav").await.unwrap();
    assert_eq!(wav, wav_header(8000, 0).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_version_of_a_piece_is_left_in_a_versioned_bucket() {
    // LCA's recordings bucket is versioned (the harness's is too): a piece deleted without
    // its version id would stay as a noncurrent version (raw call audio kept for ever).
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let recorder = recorder(&h);
    // The first piece recorded twice (a retried invocation: two versions), a second piece,
    // and an upload of a third left open by an invocation that crashed.
    record(&recorder, "call-v", 0, 8000).await;
    record(&recorder, "call-v", 0, 8000).await;
    record(&recorder, "call-v", 8000, 4000).await;
    h.s3.create_multipart_upload()
        .bucket(BUCKET)
        .key("lca-audio-raw/call-v/0000000000012000.pcm")
        .send()
        .await
        .unwrap();
    assert_eq!(h.versions("lca-audio-raw/call-v/").await, (3, 0));

    let recording = recorder.assemble("call-v").await.unwrap();
    assert_eq!(recording.pieces, 2);
    assert_eq!(
        h.versions("lca-audio-raw/call-v/").await,
        (0, 0),
        "no version and no delete marker of a piece is left"
    );
    let open =
        h.s3.list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
    assert_eq!(open.uploads().len(), 0, "no upload of a piece left open");
    // The recording itself is kept, whole.
    let wav = h.object("lca-audio-recordings/call-v.wav").await.unwrap();
    assert!(wav[WAV_HEADER_BYTES..] == audio(0, 12_000)[..]);
    assert_eq!(h.versions("lca-audio-recordings/").await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_retried_after_a_crash_leaves_one_wav_version_and_no_open_upload() {
    let h = Harness::new(KvsOptions::default(), TranscribeOptions::default()).await;
    let recorder = recorder(&h);
    record(&recorder, "call-r", 0, 8000).await;
    record(&recorder, "call-r", 8000, 4000).await;
    // A join that stopped midway (a crash, a timeout) left its upload open.
    let wav_key = "lca-audio-recordings/call-r.wav";
    h.s3.create_multipart_upload()
        .bucket(BUCKET)
        .key(wav_key)
        .send()
        .await
        .unwrap();
    let pieces = h.keys("lca-audio-raw/call-r/").await;
    let mut saved = Vec::new();
    for key in &pieces {
        saved.push((key.clone(), h.object(key).await.expect("a piece")));
    }
    let first = recorder.assemble("call-r").await.unwrap();
    assert!(!first.already_joined);
    let open =
        h.s3.list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap();
    assert_eq!(
        open.uploads().len(),
        0,
        "the stopped join's upload is aborted"
    );
    // The next attempt stopped after the WAV was complete but before the pieces were
    // deleted: they are there again, as it leaves them.
    for (key, bytes) in saved {
        h.s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }
    let again = recorder.assemble("call-r").await.unwrap();
    assert!(again.already_joined, "{again:?}");
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(
        h.versions(wav_key).await,
        (1, 0),
        "the WAV is not written twice"
    );
    assert_eq!(h.versions("lca-audio-raw/call-r/").await, (0, 0));
    let wav = h.object(wav_key).await.unwrap();
    assert!(wav[WAV_HEADER_BYTES..] == audio(0, 12_000)[..]);
}
