//! `mohd check`: everything `serve` would do before answering a call, without serving.
//!
//! Owns the human report: the SIP listeners, the RTP range, each channel's tracks (decoded and
//! rendered exactly as `serve` would), what was skipped and why, and the dialplan.

use crate::config::Config;

/// Prints the report on stdout; returns false when anything would not play.
pub fn run(config: &Config) -> bool {
    let mut ok = true;
    if let Some(src) = &config.source {
        println!("config: {}", src.display());
    } else {
        println!("config: built-in default");
    }
    for l in &config.sip.listen {
        println!("sip: listen {l}");
    }
    if let Some(tls) = &config.sip.tls {
        println!(
            "sip: tls certificate {}, key {}",
            tls.certificate.display(),
            tls.key.display()
        );
    }
    println!(
        "rtp: ports {}-{}, address {}",
        config.rtp.port_min,
        config.rtp.port_max,
        config
            .rtp
            .address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "the address each INVITE arrives on".into())
    );
    for (name, ch) in &config.channels {
        let render = crate::channel::ChannelRender::render(name, &ch.music, ch.loudness_lufs);
        println!(
            "channel {name}: {} track(s), loop {:.1} s, target {:.1} LUFS",
            render.tracks.len(),
            render.len_samples() as f64 / 8000.0,
            ch.loudness_lufs
        );
        for t in &render.tracks {
            println!(
                "  play  {} ({:.1} s)",
                t.name,
                t.len_samples as f64 / 8000.0
            );
        }
        for s in &render.skipped {
            println!("  SKIP  {}: {}", s.name, s.error);
            ok = false;
        }
        if !render.playable {
            println!("  ERROR channel {name} has nothing playable: callers would hear silence");
            ok = false;
        }
    }
    println!("dialplan:");
    for line in config.dialplan.describe() {
        println!("  {line}");
    }
    println!("{}", if ok { "OK" } else { "ERRORS found" });
    ok
}
