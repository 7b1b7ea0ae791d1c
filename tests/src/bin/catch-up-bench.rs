//! Catch-up after a capacity stall, against a Transcribe that processes audio in real time
//! (the local Transcribe paced to the call: `Pace::speed`, the least favourable reading of
//! how fast Amazon Transcribe takes audio sent faster than real time). For each stall of D
//! minutes (Transcribe refusing the call's streams with LimitExceededException for the call's
//! first D minutes), one live call through the pipeline; prints how far behind the live call
//! its final segments reached Kinesis, minute by minute of the call, and how long after the
//! call's end the last one came, and how many Transcribe streams and lanes (crate
//! `call_transcriber::lanes`: catching up) it took; checks every final segment against a
//! run without a stall (exits non-zero when one is lost, repeated, or out of its channel's
//! order).
//!
//! `cargo run --release -p lca-tests --bin catch-up-bench [-- --minutes 20 --stalls 1,5,15
//! --speed 20]`: the call is the shared sample call tiled to `--minutes`, played live at
//! `--speed` times real time, and Transcribe processes at the same speed (real time, in the
//! call's clock); KVS's payload and idle timeouts and the start backoff are scaled by it.
//! All times printed are the call's (wall time x speed).

use std::time::Duration;

use lca_tests::paced::{CallRun, live_call};

struct Args {
    minutes: u64,
    stalls: Vec<u64>,
    speed: f64,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        minutes: 20,
        stalls: vec![1, 5, 15],
        speed: 20.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} takes a value"))?;
        let number = |v: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0 && n.is_finite())
                .ok_or_else(|| format!("{arg} {v}: expected a positive number"))
        };
        match arg.as_str() {
            "--minutes" => parsed.minutes = number(&value)? as u64,
            "--speed" => parsed.speed = number(&value)?,
            "--stalls" => {
                parsed.stalls = value
                    .split(',')
                    .map(|d| number(d.trim()).map(|d| d as u64))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if parsed.minutes == 0 || parsed.stalls.contains(&0) {
        return Err("--minutes and each --stalls value must be at least 1".to_string());
    }
    if let Some(d) = parsed.stalls.iter().find(|d| **d >= parsed.minutes) {
        return Err(format!(
            "--stalls {d}: a stall must be shorter than the call (--minutes {})",
            parsed.minutes
        ));
    }
    Ok(parsed)
}

fn main() -> Result<(), String> {
    let args = args()?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    println!(
        "A {}-minute call at {}x, Transcribe processing in real time (the call's clock), its streams refused over the call's first D minutes:",
        args.minutes, args.speed
    );
    let reference = one_call(&args, 0).await?;
    let mut runs = vec![(0, reference)];
    for &stall in &args.stalls {
        runs.push((stall, one_call(&args, stall).await?));
    }
    if runs[0].1.finals.is_empty() {
        return Err("the reference run published no final segment".to_string());
    }
    // Lag by minute of the call: the latest final ending in that minute, behind live.
    print!("  call minute |");
    for (stall, _) in &runs {
        print!(" D={stall:>2} min |");
    }
    println!();
    for minute in 0..args.minutes {
        print!("  {minute:>11} |");
        for (_, run) in &runs {
            let worst = run
                .finals
                .iter()
                .filter(|((_, _, end), _)| (*end / 60_000) as u64 == minute)
                .map(|(_, late)| *late)
                .fold(None, |worst: Option<f64>, late| {
                    Some(worst.map_or(late, |w| w.max(late)))
                });
            match worst {
                Some(late) => print!(" {late:>8.1} s |"),
                None => print!("        - |"),
            }
        }
        println!();
    }
    let call_end_ms = args.minutes as i64 * 60_000;
    let mut failed = false;
    for (stall, run) in &runs {
        let compared = run.compare(&runs[0].1, call_end_ms);
        println!(
            "  D={stall:>2} min: {} finals (lost {}, repeated {}, out of order {}); last final {:.1} s after the call's end; {} Transcribe streams in {} lanes; END {}",
            run.finals.len(),
            compared.lost,
            compared.repeated,
            compared.out_of_order,
            compared.after_end,
            run.sessions,
            run.lanes,
            if run.ended { "published" } else { "MISSING" }
        );
        failed |=
            compared.lost > 0 || compared.repeated > 0 || compared.out_of_order > 0 || !run.ended;
    }
    if failed {
        return Err(
            "a call lost, repeated or reordered a final segment, or has no END".to_string(),
        );
    }
    Ok(())
}

/// Plays the call with Transcribe refusing streams for its first `stall_minutes`.
async fn one_call(args: &Args, stall_minutes: u64) -> Result<CallRun, String> {
    live_call(
        &format!("catch-up-{stall_minutes}"),
        args.minutes,
        args.speed,
        Duration::from_secs(stall_minutes * 60),
        &[],
    )
    .await
}
