//! The real offline recognizer (PocketSphinx) behind the local Transcribe, on the shared
//! Connect-shaped sample call: segments where the speech is, on the right channel, with words
//! timed inside them, partials that lead to their final, and words that resemble the script.

use lca_kvs::wer::WordErrors;
use local_aws::recognizer::pocketsphinx::{SphinxModel, SphinxRecognizer};
use local_aws::recognizer::{EnergyRecognizer, Recognizer, Segment};

fn stereo() -> Vec<u8> {
    let caller = lca_tests::fixture_bytes("connect/sample-call.caller.raw");
    let agent = lca_tests::fixture_bytes("connect/sample-call.agent.raw");
    caller
        .chunks_exact(2)
        .zip(agent.chunks_exact(2))
        .flat_map(|(c, a)| [c[0], c[1], a[0], a[1]])
        .collect()
}

fn recognize(mut recognizer: impl Recognizer, pcm: &[u8]) -> Vec<Segment> {
    let mut segments = Vec::new();
    for piece in pcm.chunks(3200) {
        segments.extend(recognizer.accept(piece));
    }
    segments.extend(recognizer.finish());
    segments
}

#[test]
fn pocketsphinx_transcribes_each_turn_on_its_channel_with_timed_words() {
    let pcm = stereo();
    let model = SphinxModel::locate().expect("pocketsphinx-en-us installed by scripts/test.sh");
    let segments = recognize(SphinxRecognizer::new(&model, 8000, 2).unwrap(), &pcm);
    let regions = recognize(EnergyRecognizer::new(8000, 2), &pcm);
    let finals: Vec<&Segment> = segments.iter().filter(|s| !s.is_partial).collect();

    // One final per spoken turn (6 agent, 5 caller), where the voice is.
    let voice: Vec<&Segment> = regions.iter().filter(|s| !s.is_partial).collect();
    assert_eq!(finals.len(), voice.len(), "{finals:#?}");
    for region in &voice {
        let heard = finals
            .iter()
            .find(|f| f.result_id == region.result_id)
            .unwrap_or_else(|| panic!("no final for the voice at {region:?}"));
        assert_eq!(heard.channel, region.channel);
        assert!(
            (heard.start_s - region.start_s).abs() < 0.35,
            "{heard:?} vs voice {region:?}"
        );
        assert!(
            heard.end_s <= region.end_s + 0.35,
            "{heard:?} vs voice {region:?}"
        );
        assert!(!heard.words.is_empty(), "{heard:?}");
        for pair in heard.words.windows(2) {
            assert!(pair[0].start_s <= pair[1].start_s, "{heard:?}");
        }
        assert_eq!(heard.start_s, heard.words[0].start_s);
        assert_eq!(
            heard.text,
            heard
                .words
                .iter()
                .map(|w| w.text.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // Partials come before their final, with the same result id.
    for partial in segments.iter().filter(|s| s.is_partial) {
        let final_at = segments
            .iter()
            .position(|s| !s.is_partial && s.result_id == partial.result_id)
            .expect("every partial is finalized");
        let partial_at = segments.iter().position(|s| s == partial).unwrap();
        assert!(partial_at < final_at);
    }
    assert!(segments.iter().filter(|s| s.is_partial).count() >= finals.len());

    // Words, not noise: clearly better than nothing heard (WER 100%), although the 16 kHz
    // model on 8 kHz synthetic speech is far from Transcribe (engine-bench has the numbers).
    let script = String::from_utf8(lca_tests::fixture_bytes(
        "connect/sample-call.transcript.tsv",
    ))
    .unwrap();
    for (tag, channel) in [("C\t", 0), ("A\t", 1)] {
        let said: Vec<&str> = script.lines().filter_map(|l| l.strip_prefix(tag)).collect();
        let heard: Vec<&str> = finals
            .iter()
            .filter(|f| f.channel == channel)
            .map(|f| f.text.as_str())
            .collect();
        let errors = WordErrors::between(&said.join(" "), &heard.join(" "));
        assert!(
            errors.rate() < 0.95,
            "channel {channel}: WER {:.2}: {heard:?}",
            errors.rate()
        );
    }
    let agent: String = finals
        .iter()
        .filter(|f| f.channel == 1)
        .map(|f| f.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(agent.contains("nine o'clock tomorrow"), "{agent}");
}
